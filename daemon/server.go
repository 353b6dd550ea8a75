package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/nixpush/nixpush/api"
	"github.com/nixpush/nixpush/nix"
	"github.com/nixpush/nixpush/queue"
)

// maxRequestBody bounds an enqueue request: 1 MiB holds about 10,000 paths.
const maxRequestBody = 1 << 20

// maxWait bounds one /v1/wait call; clients call again for longer waits.
const maxWait = 10 * time.Minute

func (d *Daemon) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/enqueue", d.handleEnqueue)
	mux.HandleFunc("GET /v1/status", d.handleStatus)
	mux.HandleFunc("GET /v1/wait", d.handleWait)
	mux.HandleFunc("POST /v1/retry", d.handleRetry)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, fmt.Errorf("no route %s %s; routes: POST /v1/enqueue, GET /v1/status, GET /v1/wait?timeout=DURATION, POST /v1/retry", r.Method, r.URL.Path))
	})
	return mux
}

func (d *Daemon) handleEnqueue(w http.ResponseWriter, r *http.Request) {
	d.lastHandoff.Store(time.Now().UnixNano())
	if err := d.mayEnqueue(peerFrom(r.Context())); err != nil {
		writeError(w, http.StatusForbidden, fmt.Errorf("enqueue: %w", err))
		return
	}
	var req api.EnqueueRequest
	if code, err := decodeJSON(w, r, &req, `{"paths": ["/nix/store/..."]}`); err != nil {
		writeError(w, code, fmt.Errorf("enqueue: %w", err))
		return
	}
	paths, err := d.requestPaths(req)
	if err == nil {
		err = d.checkExist(paths)
	}
	if err != nil {
		writeError(w, http.StatusBadRequest, fmt.Errorf("enqueue: %w", err))
		return
	}
	enqueue := d.queue.Enqueue
	if req.Recheck {
		enqueue = d.queue.EnqueueRecheck
	}
	var res queue.EnqueueResult
	err = d.write(func() (err error) { res, err = enqueue(r.Context(), paths); return err })
	if err != nil {
		// Not a decision about the paths: the caller keeps them (the hook
		// spools), and so does the daemon, in memory, to queue them itself
		// once a commit succeeds.
		d.qhealth.hold(paths)
		d.log.Error().Err(err).Strs("paths", paths).Msg("queue cannot write; paths held in memory until it can")
		writeError(w, http.StatusServiceUnavailable, fmt.Errorf("enqueue: queue cannot write: %w", err))
		return
	}
	d.qhealth.release(paths)
	d.log.Debug().Strs("paths", paths).Int("added", res.Added).Msg("enqueued")
	writeJSON(w, http.StatusOK, api.EnqueueResponse{Added: res.Added, Merged: res.Merged})
}

// decodeJSON reads a request body of at most maxRequestBody bytes into v,
// refusing unknown fields; it returns the status code to answer an error
// with.
func decodeJSON(w http.ResponseWriter, r *http.Request, v any, example string) (int, error) {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxRequestBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return http.StatusRequestEntityTooLarge, fmt.Errorf("request over %d bytes; send fewer paths per request", maxRequestBody)
		}
		return http.StatusBadRequest, fmt.Errorf("bad JSON body: %v; want %s", err, example)
	}
	if dec.More() {
		return http.StatusBadRequest, fmt.Errorf("bad JSON body: more than one value; want %s", example)
	}
	return 0, nil
}

// checkExist refuses paths that are not in the store at all: a path Nix
// just built is there, and checking costs a stat, not a Nix call. Whether
// the Nix database registers it as valid is checked before upload.
func (d *Daemon) checkExist(paths []string) error {
	for _, p := range paths {
		p = itemPath(p)
		if _, err := os.Lstat(p); err != nil {
			return fmt.Errorf("%s is not in the store (%v); build it first", p, errors.Unwrap(err))
		}
	}
	return nil
}

func (d *Daemon) handleRetry(w http.ResponseWriter, r *http.Request) {
	if err := d.mayEnqueue(peerFrom(r.Context())); err != nil {
		writeError(w, http.StatusForbidden, fmt.Errorf("retry: %w", err))
		return
	}
	var req api.RetryRequest
	if code, err := decodeJSON(w, r, &req, `{"all": true} or {"paths": ["/nix/store/..."]}`); err != nil {
		writeError(w, code, fmt.Errorf("retry: %w", err))
		return
	}
	if !req.All && len(req.Paths) == 0 {
		writeError(w, http.StatusBadRequest, errors.New("retry: say which: {\"all\": true} or {\"paths\": [...]}"))
		return
	}
	var n int
	err := d.write(func() (err error) { n, err = d.queue.Requeue(r.Context(), req.All, req.Paths...); return err })
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, fmt.Errorf("retry: queue cannot write: %w", err))
		return
	}
	writeJSON(w, http.StatusOK, api.RetryResponse{Requeued: n})
}

// requestPaths checks an enqueue request and returns what to queue: the
// paths, or the derivation when Nix 2.8.0 gave no output paths, then the
// derivation's build log.
func (d *Daemon) requestPaths(req api.EnqueueRequest) ([]string, error) {
	if len(req.Paths) == 0 && req.DrvPath == "" {
		return nil, errors.New("no paths and no drv_path")
	}
	var drv string
	if req.DrvPath != "" {
		var err error
		if drv, err = nix.StorePath(d.storeDir, req.DrvPath); err != nil {
			return nil, err
		}
		if !strings.HasSuffix(drv, ".drv") {
			return nil, fmt.Errorf("drv_path %q is not a derivation (.drv)", req.DrvPath)
		}
	}
	if len(req.Paths) == 0 {
		// Nix 2.8.0 names only the derivation. Its outputs are usually
		// written in the .drv file: queue them at once, which spares the
		// workers a round of queue commits per build. Otherwise (floating
		// content-addressed outputs, or one missing) a worker asks Nix.
		if outs, err := nix.StaticOutputs(drv); err == nil && len(outs) > 0 && d.checkExist(outs) == nil {
			return append(outs, d.logItem(drv)...), nil
		}
		return append(append([]string{drv + allOutputs}, d.logItem(drv)...), realisationsItem(drv)...), nil
	}
	out := make([]string, 0, len(req.Paths))
	for _, p := range req.Paths {
		sp, err := nix.StorePath(d.storeDir, p)
		if err != nil {
			return nil, err
		}
		out = append(out, sp)
	}
	if drv != "" {
		out = append(append(out, d.logItem(drv)...), realisationsItem(drv)...)
	}
	return out, nil
}

func (d *Daemon) handleStatus(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, d.status())
}

func (d *Daemon) handleWait(w http.ResponseWriter, r *http.Request) {
	timeout := maxWait
	if s := r.URL.Query().Get("timeout"); s != "" {
		t, err := time.ParseDuration(s)
		if err != nil || t < 0 {
			writeError(w, http.StatusBadRequest, fmt.Errorf("wait: timeout %q: want a duration such as 30s or 5m", s))
			return
		}
		timeout = min(t, maxWait)
	}
	ctx, cancel := context.WithTimeout(r.Context(), timeout)
	defer cancel()
	for {
		changed := d.queue.Changed()
		// During a push almost every change leaves items queued or
		// leased: that is seen without building the whole status (a
		// spool listing, the failures, a read of the oldest item).
		if d.queue.Pending() == 0 {
			if st := d.status(); st.Drained {
				writeJSON(w, http.StatusOK, st)
				return
			}
		}
		select {
		case <-changed:
		case <-ctx.Done():
			writeJSON(w, http.StatusOK, d.status())
			return
		}
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

func writeError(w http.ResponseWriter, code int, err error) {
	msg := strings.ReplaceAll(err.Error(), "\n", " ")
	writeJSON(w, code, api.ErrorResponse{Error: msg})
}
