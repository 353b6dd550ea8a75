package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/nixpush/nixpush/api"
	"github.com/nixpush/nixpush/internal/testenv"
)

var binDir string

func TestMain(m *testing.M) { os.Exit(testenv.WithNixpush(m, "..", &binDir)) }

func nixpushBin() string { return filepath.Join(binDir, "nixpush") }

// fixture is where an e2e test starts: the machine's Nix with a client
// cache of the test's own, a new signing key pair, a cache (a MinIO
// bucket, or the daemon's embedded file:// cache) and a nixpush daemon
// pushing to it, whose post-build hook is f.d.Hook.
type fixture struct {
	t      *testing.T
	nx     *testenv.NixEnv
	m      *testenv.MinIOServer // nil for the file:// cache
	p      *testenv.Proxy       // between the daemon and MinIO (throughProxy), or nil
	bucket string               // the MinIO bucket, or ""
	uri    string               // the store URI the daemon has, "" for its file:// default
	env    []string             // the daemon's environment: MinIO's credentials, daemonEnv
	args   []string             // the daemon's arguments
	sec    string               // the secret key file
	pub    string               // the public key, as keygen writes it
	d      *daemon              // nil with laterDaemon
}

// fixtureOption changes what newFixture sets up.
type fixtureOption func(*fixtureSpec)

type fixtureSpec struct {
	bucket     string
	publicRead bool
	proxy      bool
	rate       int // the proxy's rate, bytes a second per connection; 0 lets requests through at full speed
	env, args  []string
	later      bool
}

// onBucket makes the cache a bucket of a new MinIO that anyone may read
// (as Nix reads it, over plain HTTP).
func onBucket(name string) fixtureOption {
	return func(s *fixtureSpec) { s.bucket, s.publicRead = name, true }
}

// onPrivateBucket is onBucket with a bucket only the credentials read.
func onPrivateBucket(name string) fixtureOption {
	return func(s *fixtureSpec) { s.bucket, s.publicRead = name, false }
}

// throughProxy puts a testenv.Proxy between the daemon and MinIO, letting
// requests through at rate bytes a second per connection (0: full speed).
func throughProxy(rate int) fixtureOption {
	return func(s *fixtureSpec) { s.proxy, s.rate = true, rate }
}

// daemonArgs adds arguments to the daemon's command line.
func daemonArgs(args ...string) fixtureOption {
	return func(s *fixtureSpec) { s.args = append(s.args, args...) }
}

// daemonEnv adds variables to the daemon's environment.
func daemonEnv(env ...string) fixtureOption {
	return func(s *fixtureSpec) { s.env = append(s.env, env...) }
}

// laterDaemon starts no daemon: the test calls f.startDaemon when it is
// ready for one.
func laterDaemon() fixtureOption { return func(s *fixtureSpec) { s.later = true } }

// newFixture sets the test up: MinIO and its bucket when asked for (in
// that order, so that cleanup stops the daemon before MinIO), Nix, a key
// pair named key (as nixpush keygen makes it), and a daemon signing with
// it.
func newFixture(t *testing.T, key string, opts ...fixtureOption) *fixture {
	t.Helper()
	var s fixtureSpec
	for _, o := range opts {
		o(&s)
	}
	f := &fixture{t: t, bucket: s.bucket}
	if s.bucket != "" {
		f.m = testenv.MinIO(t)
		f.m.MakeBucket(t, s.bucket, s.publicRead)
		f.uri = f.m.StoreURI(s.bucket)
		if s.proxy {
			f.p = testenv.NewProxy(t, f.m.Endpoint)
			f.p.SetRate(s.rate)
			f.uri = f.m.StoreURIVia(s.bucket, f.p.Addr)
		}
		f.env = f.m.CredentialsEnv()
	}
	f.env = append(f.env, s.env...)
	f.nx = testenv.Nix(t)
	f.sec, f.pub = keys(t, key)
	if f.uri != "" {
		f.args = []string{"--store-uri", f.uri}
	}
	f.args = append(append(f.args, "--secret-key-file", f.sec), s.args...)
	if !s.later {
		f.startDaemon()
	}
	return f
}

// startDaemon starts a daemon on the fixture's cache, key, environment and
// arguments, with args added; the first one started is f.d.
func (f *fixture) startDaemon(args ...string) *daemon {
	f.t.Helper()
	d := startDaemon(f.t, f.env, append(append([]string(nil), f.args...), args...)...)
	if f.d == nil {
		f.d = d
	}
	return d
}

// cacheURL is where Nix substitutes from: the bucket over plain HTTP, or
// the daemon's file:// cache.
func (f *fixture) cacheURL() string {
	if f.m != nil {
		return f.m.HTTPURL(f.bucket)
	}
	return "file://" + filepath.Join(f.d.StateDir, "cache")
}

// build builds expr with the daemon's post-build hook and returns its
// outputs.
func (f *fixture) build(expr string) []string {
	f.t.Helper()
	return f.nx.Build(f.t, expr, "--option", "post-build-hook", f.d.Hook)
}

// checkFetched is the consumer check: real Nix, trusting the fixture's
// key, fetches the whole closure of paths from the cache, byte-exactly.
func (f *fixture) checkFetched(paths ...string) {
	f.t.Helper()
	checkFetched(f.t, f.nx, f.cacheURL(), f.pub, paths...)
}

// client is a MinIO client of the fixture's server.
func (f *fixture) client() *minio.Client {
	f.t.Helper()
	return f.m.Client(f.t)
}

// keys makes a signing key pair with nixpush keygen.
func keys(t *testing.T, name string) (secretFile, public string) {
	t.Helper()
	dir := t.TempDir()
	out, err := testenv.Command(t, nixpushBin(), "keygen", "--name", name, "--out", dir).CombinedOutput()
	if err != nil {
		t.Fatalf("keygen: %v\n%s", err, out)
	}
	pub, err := os.ReadFile(filepath.Join(dir, "public.key"))
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, "secret.key"), string(pub)
}

// daemon is a running nixpush daemon.
type daemon = testenv.Daemon

// startDaemon starts nixpush daemon with args and waits for its socket.
func startDaemon(t *testing.T, env []string, args ...string) *daemon {
	t.Helper()
	return testenv.StartDaemon(t, binDir, env, args...)
}

// handOver runs nixpush-hook as Nix runs it after building out.
func handOver(d *daemon, out string) error {
	h := d.Command(d.HookBin())
	h.Env = append(os.Environ(), append(d.HookEnv(), "OUT_PATHS="+out, "DRV_PATH=")...)
	if o, err := h.CombinedOutput(); err != nil {
		return fmt.Errorf("nixpush-hook: %v\n%s", err, o)
	}
	return nil
}

// eventually calls cond until it holds, and fails the test if it still
// does not after timeout, with the message format and args make (a
// fmt.Stringer among args, such as a daemon's Log, shows its state at
// that moment): a regression fails with a message instead of hanging.
func eventually(t testing.TB, timeout time.Duration, cond func() bool, format string, args ...any) {
	t.Helper()
	if !poll(timeout, cond) {
		t.Fatalf("%s: not after %s", fmt.Sprintf(format, args...), timeout)
	}
}

// poll calls cond until it holds or timeout has passed, and reports
// whether it held: eventually, for goroutines other than the test's.
// It checks every 10 ms at first, backing off to 100 ms.
func poll(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for pause := 10 * time.Millisecond; !cond(); pause = min(2*pause, 100*time.Millisecond) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(pause)
	}
	return true
}

func seed() string {
	var b [6]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func lines(s string) []string { return strings.Fields(strings.TrimSpace(s)) }

// statusJSON is nixpush status --json, parsed.
func statusJSON(t *testing.T, d *daemon) (api.Status, error) {
	out, err := d.CLI("status", "--json")
	if err != nil {
		return api.Status{}, fmt.Errorf("status --json: %v: %s", err, out)
	}
	var st api.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return api.Status{}, fmt.Errorf("status --json: %v: %s", err, out)
	}
	return st, nil
}

// fullStatus is nixpush status --json, parsed; the test fails if it fails.
func fullStatus(t *testing.T, d *daemon) api.Status {
	t.Helper()
	st, err := statusJSON(t, d)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// status is the counts of nixpush status --json (queued, active, failed,
// done), each checked to be an integer in the JSON.
func status(t *testing.T, d *daemon) map[string]int {
	t.Helper()
	out, err := d.CLI("status", "--json")
	if err != nil {
		t.Fatalf("status: %v\n%s", err, out)
	}
	var raw map[string]any
	if err := json.Unmarshal([]byte(out), &raw); err != nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	st := map[string]int{}
	for _, k := range []string{"queued", "active", "failed", "done"} {
		f, ok := raw[k].(float64)
		if !ok || f != float64(int(f)) {
			t.Fatalf("status --json: %q is not an integer: %v", k, raw[k])
		}
		st[k] = int(f)
	}
	return st
}

// waitStatus polls status --json until ok holds (deadline 2 minutes).
func waitStatus(t *testing.T, d *daemon, what string, ok func(api.Status) bool) api.Status {
	t.Helper()
	var st api.Status
	eventually(t, 2*time.Minute, func() bool { st = fullStatus(t, d); return ok(st) },
		"no %s; status: %+v\ndaemon log:\n%s", what, &st, d.Log)
	return st
}
