package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"

	"github.com/nixpush/nixpush/api"
)

// Client talks to the daemon over its Unix socket.
type Client struct {
	Socket string
	http   *http.Client
}

// New returns a client for the daemon listening on socket.
func New(socket string) *Client {
	if socket == "" {
		socket = api.DefaultSocket
	}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		DisableCompression: true,
	}
	return &Client{Socket: socket, http: &http.Client{Transport: tr}}
}

// Enqueue hands paths to the daemon and returns once they are committed.
func (c *Client) Enqueue(ctx context.Context, req api.EnqueueRequest) (api.EnqueueResponse, error) {
	var resp api.EnqueueResponse
	err := c.do(ctx, http.MethodPost, "/v1/enqueue", req, &resp)
	return resp, err
}

// Retry re-queues failed items: all of them, or the paths given.
func (c *Client) Retry(ctx context.Context, req api.RetryRequest) (api.RetryResponse, error) {
	var resp api.RetryResponse
	err := c.do(ctx, http.MethodPost, "/v1/retry", req, &resp)
	return resp, err
}

// Status returns the queue's state.
func (c *Client) Status(ctx context.Context) (api.Status, error) {
	var st api.Status
	err := c.do(ctx, http.MethodGet, "/v1/status", nil, &st)
	return st, err
}

// Wait blocks until nothing is queued or active, or until timeout, and
// returns the state then.
func (c *Client) Wait(ctx context.Context, timeout time.Duration) (api.Status, error) {
	var st api.Status
	err := c.do(ctx, http.MethodGet, "/v1/wait?timeout="+url.QueryEscape(timeout.String()), nil, &st)
	return st, err
}

func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://nixpush"+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("daemon at %s: %w", c.Socket, unwrapURLError(err))
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("daemon at %s: %w", c.Socket, err)
	}
	if resp.StatusCode/100 != 2 {
		var e api.ErrorResponse
		if json.Unmarshal(data, &e) != nil || e.Error == "" {
			e.Error = fmt.Sprintf("%s %s: %s", method, path, resp.Status)
		}
		return &api.APIError{StatusCode: resp.StatusCode, Message: e.Error}
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("daemon at %s: bad answer to %s: %w", c.Socket, path, err)
	}
	return nil
}

func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}
