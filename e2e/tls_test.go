package e2e

import (
	"strings"
	"testing"

	"github.com/nixpush/nixpush/internal/testenv"
)

// TestPrivateCA runs MinIO over https with a certificate from a private CA,
// as the classic self-signed setup does: without --ca-certificate the store
// check and init name the certificate; with it init prepares the bucket, the
// daemon pushes, and real Nix substitutes over https trusting the CA as its
// certificate file.
func TestPrivateCA(t *testing.T) {
	m := testenv.MinIOTLS(t)
	nx := testenv.Nix(t)
	sec, pub := keys(t, "nixpush-e2e-tls-1")
	uri := m.StoreURI("tls-cache")
	if !strings.Contains(uri, "scheme=https") {
		t.Fatalf("store URI %s is not https", uri)
	}

	initCmd := func(args ...string) (string, error) {
		cmd := testenv.Command(t, nixpushBin(), append([]string{"init", "--store-uri", uri, "--public-read"}, args...)...)
		cmd.Env = append(cmd.Environ(), m.CredentialsEnv()...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := initCmd(); err == nil || !strings.Contains(out, "x509: certificate signed by unknown authority") ||
		!strings.Contains(out, "--ca-certificate") {
		t.Fatalf("init without the CA: %v\n%s\nwant a certificate error and the fix", err, out)
	}
	if out, err := initCmd("--ca-certificate", m.CAFile); err != nil {
		t.Fatalf("init with the CA: %v\n%s", err, out)
	}

	ns := newNotifySocket(t)
	blind := startDaemon(t, append(m.CredentialsEnv(), "NOTIFY_SOCKET="+ns.Path), "--store-uri", uri, "--secret-key-file", sec)
	storeFails(t, blind, ns, "store certificate: ", "--ca-certificate")
	if st := fullStatus(t, blind); !strings.Contains(st.StoreCheck.Error, "certificate signed by unknown authority") {
		t.Errorf("store check %q does not name the certificate problem", st.StoreCheck.Error)
	}
	blind.Stop()

	d := startDaemon(t, m.CredentialsEnv(), "--store-uri", uri, "--secret-key-file", sec, "--ca-certificate", m.CAFile)
	out := nx.Build(t, testenv.Chain(seed(), 3))
	if o, err := d.CLI("push", "--wait", out[0]); err != nil {
		t.Fatalf("push: %v\n%s\n%s", err, o, d.Log)
	}
	if st := fullStatus(t, d); !st.StoreCheck.OK {
		t.Fatalf("store check with the CA: %+v", st.StoreCheck)
	}
	checkFetched(t, nx.WithEnv("NIX_SSL_CERT_FILE="+m.CAFile), m.HTTPURL("tls-cache"), pub, out...)
}
