package testenv

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// MinIOBinary finds the MinIO server: $NIXPUSH_MINIO, $PATH, then the cache
// scripts/test.sh builds it into.
func MinIOBinary() (string, error) {
	if p := os.Getenv("NIXPUSH_MINIO"); p != "" {
		return p, nil
	}
	if p, err := exec.LookPath("minio"); err == nil {
		return p, nil
	}
	cache := os.Getenv("XDG_CACHE_HOME")
	if cache == "" {
		home, _ := os.UserHomeDir()
		cache = filepath.Join(home, ".cache")
	}
	p := filepath.Join(cache, "nixpush", "bin", "minio")
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("minio not found in $NIXPUSH_MINIO, $PATH or %s; run ./scripts/test.sh, which builds it", p)
	}
	return p, nil
}

// MinIOServer is a MinIO server on 127.0.0.1 with its data in a temp dir.
type MinIOServer struct {
	Endpoint  string // 127.0.0.1:PORT
	AccessKey string
	SecretKey string
	bin, dir  string
	console   int
	cmd       *exec.Cmd
	exited    chan struct{}
	log       *os.File
	// CAFile is the PEM of the private CA that signed the server's
	// certificate, for a server started by MinIOTLS ("" for plain http).
	CAFile   string
	certsDir string
}

// MinIO starts a MinIO server for the test and stops it at cleanup.
func MinIO(t testing.TB) *MinIOServer { return startMinIO(t, false) }

// MinIOTLS starts a MinIO server that serves https with a certificate for
// 127.0.0.1 signed by a private CA made for the test (CAFile).
func MinIOTLS(t testing.TB) *MinIOServer { return startMinIO(t, true) }

func startMinIO(t testing.TB, withTLS bool) *MinIOServer {
	t.Helper()
	bin, err := MinIOBinary()
	if err != nil {
		t.Fatal(err)
	}
	m := &MinIOServer{
		Endpoint:  "127.0.0.1:" + strconv.Itoa(FreePort(t)),
		AccessKey: "nixpush-" + randHex(4),
		SecretKey: randHex(16),
		bin:       bin,
		dir:       minioDir(t),
		console:   FreePort(t),
	}
	if withTLS {
		m.certsDir = filepath.Join(m.dir, "certs")
		m.CAFile = filepath.Join(m.dir, "ca.pem")
		if err := WriteCA(m.CAFile, m.certsDir, "127.0.0.1"); err != nil {
			t.Fatal(err)
		}
	}
	m.Start(t)
	t.Cleanup(func() { m.Stop(t) })
	return m
}

// minioDir is where a MinIO keeps its data: a tmpfs of the size
// NIXPUSH_MINIO_TMPFS says (benchmarks: MinIO then costs no disk writes
// that builds and the queue's fsyncs would share, as a remote S3 would not,
// and its speed no longer depends on the state of the disk), else a temp dir.
func minioDir(t testing.TB) string {
	if size := os.Getenv("NIXPUSH_MINIO_TMPFS"); size != "" {
		return Tmpfs(t, size)
	}
	return t.TempDir()
}

// Start starts (or restarts, on the same port and data) the server and
// waits until it serves requests (cluster health: write quorum reached).
func (m *MinIOServer) Start(t testing.TB) {
	t.Helper()
	log, err := os.OpenFile(filepath.Join(m.dir, "minio.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	m.log = log
	args := []string{"server", "--quiet", "--address", m.Endpoint, "--console-address", "127.0.0.1:" + strconv.Itoa(m.console)}
	if m.certsDir != "" {
		args = append(args, "--certs-dir", m.certsDir)
	}
	m.cmd = exec.Command(m.bin, append(args, filepath.Join(m.dir, "data"))...)
	m.cmd.Env = append(os.Environ(), "MINIO_ROOT_USER="+m.AccessKey, "MINIO_ROOT_PASSWORD="+m.SecretKey,
		"MINIO_BROWSER=off", "MINIO_UPDATE=off", "HOME="+m.dir)
	m.cmd.Stdout, m.cmd.Stderr = log, log
	if err := m.cmd.Start(); err != nil {
		t.Fatalf("start minio: %v", err)
	}
	m.exited = make(chan struct{})
	go func() { m.cmd.Wait(); close(m.exited) }()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := m.httpClient(t).Get(m.scheme() + "://" + m.Endpoint + "/minio/health/cluster")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		select {
		case <-m.exited:
			b, _ := os.ReadFile(log.Name())
			t.Fatalf("minio exited at start:\n%s", b)
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatalf("minio on %s not live after 30s", m.Endpoint)
}

// Stop stops the server (SIGTERM, then SIGKILL after 10 s); its data stays.
func (m *MinIOServer) Stop(t testing.TB) {
	if m.cmd == nil || m.cmd.Process == nil {
		return
	}
	select {
	case <-m.exited:
		return
	default:
	}
	m.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-m.exited:
	case <-time.After(10 * time.Second):
		m.cmd.Process.Kill()
		<-m.exited
	}
	m.log.Close()
}

// Kill kills the server with SIGKILL, a crash in the middle of whatever
// it was doing; its data stays, and Start brings it back.
func (m *MinIOServer) Kill(t testing.TB) {
	t.Helper()
	m.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-m.exited:
	case <-time.After(time.Minute):
		t.Fatalf("minio still running a minute after SIGKILL")
	}
	m.log.Close()
}

// StoreURIVia is the bucket as an s3:// store URI reached through another
// endpoint, such as a Proxy in front of the server.
func (m *MinIOServer) StoreURIVia(bucket, endpoint string) string {
	return "s3://" + bucket + "?endpoint=" + endpoint + "&scheme=http&region=us-east-1"
}

// Pid is the server's process id.
func (m *MinIOServer) Pid() int { return m.cmd.Process.Pid }

// CPUTime is the CPU time the server has used so far.
func (m *MinIOServer) CPUTime() (time.Duration, error) { return ProcessCPUTime(m.cmd.Process.Pid) }

// Client is an admin client of the server.
func (m *MinIOServer) Client(t testing.TB) *minio.Client {
	t.Helper()
	c, err := minio.New(m.Endpoint, &minio.Options{Creds: credentials.NewStaticV4(m.AccessKey, m.SecretKey, ""), Region: "us-east-1",
		Secure: m.CAFile != "", Transport: m.httpClient(t).Transport})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// MakeBucket creates a bucket; publicRead lets anyone GET its objects, as
// `mc anonymous set download` does.
func (m *MinIOServer) MakeBucket(t testing.TB, name string, publicRead bool) {
	t.Helper()
	ctx := context.Background()
	c := m.Client(t)
	if err := c.MakeBucket(ctx, name, minio.MakeBucketOptions{Region: "us-east-1"}); err != nil {
		t.Fatalf("make bucket %s: %v", name, err)
	}
	if publicRead {
		policy := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":["*"]},"Action":["s3:GetObject"],"Resource":["arn:aws:s3:::` + name + `/*"]}]}`
		if err := c.SetBucketPolicy(ctx, name, policy); err != nil {
			t.Fatalf("bucket policy %s: %v", name, err)
		}
	}
}

// HTTPURL is the bucket's plain-HTTP URL, a substituter for any Nix.
func (m *MinIOServer) HTTPURL(bucket string) string {
	return m.scheme() + "://" + m.Endpoint + "/" + bucket
}

func (m *MinIOServer) scheme() string {
	if m.CAFile != "" {
		return "https"
	}
	return "http"
}

// httpClient trusts the server's CA when it has one.
func (m *MinIOServer) httpClient(t testing.TB) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if m.CAFile != "" {
		pem, err := os.ReadFile(m.CAFile)
		if err != nil {
			t.Fatal(err)
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(pem)
		tr.TLSClientConfig = &tls.Config{RootCAs: pool}
	}
	return &http.Client{Transport: tr}
}

// StoreURI is the bucket as an s3:// store URI for nixpush.
func (m *MinIOServer) StoreURI(bucket string) string {
	return "s3://" + bucket + "?endpoint=" + m.Endpoint + "&scheme=" + m.scheme() + "&region=us-east-1"
}

// CredentialsEnv returns the AWS environment variables of the root user.
func (m *MinIOServer) CredentialsEnv() []string {
	return []string{"AWS_ACCESS_KEY_ID=" + m.AccessKey, "AWS_SECRET_ACCESS_KEY=" + m.SecretKey}
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}
