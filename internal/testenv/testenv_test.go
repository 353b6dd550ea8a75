package testenv

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/minio/minio-go/v7"
)

func TestMinIOPublicBucketSurvivesRestart(t *testing.T) {
	m := MinIO(t)
	m.MakeBucket(t, "pub", true)
	if _, err := m.Client(t).PutObject(context.Background(), "pub", "hello", strings.NewReader("world"), 5, minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	get := func() string {
		resp, err := http.Get(m.HTTPURL("pub") + "/hello")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("anonymous GET: %s", resp.Status)
		}
		return string(b)
	}
	if get() != "world" {
		t.Fatal("wrong content")
	}
	m.Stop(t)
	if _, err := http.Get(m.HTTPURL("pub") + "/hello"); err == nil {
		t.Fatal("server still answers after Stop")
	}
	m.Start(t)
	if get() != "world" {
		t.Fatal("data lost across restart")
	}
}

func TestNixBuildsTheExpressions(t *testing.T) {
	n := Nix(t)
	for name, expr := range map[string]string{
		"chain":   Chain("testenv-"+randHex(4), 3),
		"dag":     DAG("testenv-"+randHex(4), 8, 4, true),
		"awkward": Awkward("testenv-" + randHex(4)),
	} {
		t.Run(name, func(t *testing.T) {
			out := n.Build(t, expr)
			closure, err := n.Run(t, "nix-store", append([]string{"-qR"}, out...)...)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: %d paths in the closure", name, len(strings.Fields(closure)))
		})
	}
}

func TestTreeDiff(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	for _, d := range []string{a, b} {
		os.WriteFile(filepath.Join(d, "f"), []byte("x"), 0o644)
		os.Symlink("f", filepath.Join(d, "l"))
	}
	if d := TreeDiff(a, b); d != "" {
		t.Fatalf("equal trees differ: %s", d)
	}
	os.Chmod(filepath.Join(b, "f"), 0o755)
	if d := TreeDiff(a, b); !strings.Contains(d, "executable") {
		t.Fatalf("exec bit: %q", d)
	}
	os.Chmod(filepath.Join(b, "f"), 0o644)
	os.WriteFile(filepath.Join(b, "extra"), nil, 0o644)
	if d := TreeDiff(a, b); !strings.Contains(d, "only in") {
		t.Fatalf("extra file: %q", d)
	}
}
