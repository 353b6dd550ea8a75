package hook

import (
	"encoding/json"
	"errors"
	"github.com/nixpush/nixpush/api"
	"net"
	"net/http"
	"path/filepath"
	"testing"
	"time"
)

// serve runs h on a Unix socket and returns its path.
func serve(t *testing.T, h http.HandlerFunc) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "d.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return sock
}

func TestHandoff(t *testing.T) {
	req := api.EnqueueRequest{Paths: []string{"/nix/store/00000000000000000000000000000000-a"}}
	t.Run("committed", func(t *testing.T) {
		var got api.EnqueueRequest
		sock := serve(t, func(w http.ResponseWriter, r *http.Request) {
			if r.Method != "POST" || r.URL.Path != "/v1/enqueue" || r.Header.Get("Content-Type") != "application/json" {
				http.Error(w, "bad request line", 400)
				return
			}
			json.NewDecoder(r.Body).Decode(&got)
			w.Write([]byte(`{"added":1,"merged":0}`))
		})
		if err := Handoff(sock, req, time.Second); err != nil {
			t.Fatal(err)
		}
		if len(got.Paths) != 1 || got.Paths[0] != req.Paths[0] {
			t.Fatalf("daemon got %+v", got)
		}
	})
	t.Run("refused", func(t *testing.T) {
		sock := serve(t, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(400)
			json.NewEncoder(w).Encode(api.ErrorResponse{Error: `path "/x" is not in /nix/store; give store paths <like> this`})
		})
		err := Handoff(sock, req, time.Second)
		var ae *api.APIError
		if !errors.As(err, &ae) || ae.StatusCode != 400 || ae.Message != `path "/x" is not in /nix/store; give store paths <like> this` {
			t.Fatalf("got %#v", err)
		}
	})
	t.Run("no daemon", func(t *testing.T) {
		err := Handoff(filepath.Join(t.TempDir(), "none.sock"), req, time.Second)
		var he *HandoffError
		if !errors.As(err, &he) || api.IsAPIError(err) {
			t.Fatalf("got %#v", err)
		}
	})
	t.Run("hung daemon", func(t *testing.T) {
		release := make(chan struct{})
		defer close(release)
		sock := serve(t, func(w http.ResponseWriter, r *http.Request) { <-release })
		start := time.Now()
		err := Handoff(sock, req, 200*time.Millisecond)
		if took := time.Since(start); took > 30*time.Second { // a hang, not a slow machine
			t.Fatalf("took %v with a 200ms timeout", took)
		}
		var he *HandoffError
		if !errors.As(err, &he) || he.Error() == "" {
			t.Fatalf("got %#v", err)
		}
	})
	t.Run("not http", func(t *testing.T) {
		sock := filepath.Join(t.TempDir(), "raw.sock")
		ln, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() {
			c, err := ln.Accept()
			if err == nil {
				c.Write([]byte("SSH-2.0-nope\r\n"))
				c.Close()
			}
		}()
		if err := Handoff(sock, req, time.Second); err == nil || api.IsAPIError(err) {
			t.Fatalf("got %v", err)
		}
	})
}
