package hook

import (
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"path/filepath"
	"testing"
	"time"
)

func TestAppendJSONMatchesEncodingJSON(t *testing.T) {
	for _, req := range []EnqueueRequest{
		{},
		{Paths: []string{"/nix/store/00000000000000000000000000000000-a"}},
		{DrvPath: "/nix/store/00000000000000000000000000000000-a.drv"},
		{Paths: []string{"a", "b"}, DrvPath: "c"},
		{Paths: []string{"a"}, Recheck: true},
		{Recheck: true},
		{Paths: []string{"quote\" back\\ nl\n tab\t cr\r nul\x00 \x1f <>& \u2028\u2029 é 日本 \xff\xfe bad"}},
	} {
		checkJSON(t, req)
	}
}

func FuzzAppendJSON(f *testing.F) {
	f.Add("/nix/store/00000000000000000000000000000000-a", "x.drv")
	f.Add("\x00\xff\"\\<\u2028", "")
	f.Fuzz(func(t *testing.T, p, drv string) {
		checkJSON(t, EnqueueRequest{Paths: []string{p, drv}, DrvPath: drv})
	})
}

// checkJSON asserts that AppendJSON writes what encoding/json writes for
// the same fields, and that it reads back.
func checkJSON(t *testing.T, req EnqueueRequest) {
	t.Helper()
	type plain EnqueueRequest // no MarshalJSON method
	want, err := json.Marshal(plain(req))
	if err != nil {
		t.Fatal(err)
	}
	got := req.AppendJSON(nil)
	if string(got) != string(want) {
		t.Fatalf("AppendJSON(%+v)\n got %s\nwant %s", req, got, want)
	}
	var back EnqueueRequest
	if err := json.Unmarshal(got, &back); err != nil {
		t.Fatalf("%s does not parse: %v", got, err)
	}
}

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
	req := EnqueueRequest{Paths: []string{"/nix/store/00000000000000000000000000000000-a"}}
	t.Run("committed", func(t *testing.T) {
		var got EnqueueRequest
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
			json.NewEncoder(w).Encode(ErrorResponse{Error: `path "/x" is not in /nix/store; give store paths <like> this`})
		})
		err := Handoff(sock, req, time.Second)
		var api *APIError
		if !errors.As(err, &api) || api.StatusCode != 400 || api.Message != `path "/x" is not in /nix/store; give store paths <like> this` {
			t.Fatalf("got %#v", err)
		}
	})
	t.Run("no daemon", func(t *testing.T) {
		err := Handoff(filepath.Join(t.TempDir(), "none.sock"), req, time.Second)
		var he *HandoffError
		if !errors.As(err, &he) || IsAPIError(err) {
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
		if err := Handoff(sock, req, time.Second); err == nil || IsAPIError(err) {
			t.Fatalf("got %v", err)
		}
	})
}
