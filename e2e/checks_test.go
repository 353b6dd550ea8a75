package e2e

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"testing"

	"github.com/minio/minio-go/v7"
	"github.com/nix-community/go-nix/pkg/narinfo"

	"github.com/nixpush/nixpush/internal/testenv"
)

// What the tests assert of a cache: through real Nix (checkFetched,
// checkRefused) and by reading the bucket back from MinIO (bucketProblems
// and the checks built on it).

// closureOf lists the closure of paths in the machine's store.
func closureOf(t *testing.T, nx *testenv.NixEnv, paths ...string) []string {
	t.Helper()
	out, err := nx.Run(t, "nix-store", append([]string{"--query", "--requisites"}, paths...)...)
	if err != nil {
		t.Fatal(err)
	}
	return lines(out)
}

// checkFetched asserts that real Nix, trusting pub, fetches the whole
// closure of paths from the cache into a fresh store, byte-exactly.
func checkFetched(t *testing.T, nx *testenv.NixEnv, from, pub string, paths ...string) {
	t.Helper()
	root, err := nx.CopyFrom(t, from, pub, paths...)
	if err != nil {
		t.Fatalf("nix copy --from %s: %v", from, err)
	}
	n := checkTrees(t, nx, root, paths...)
	t.Logf("nix copy --from %s fetched all %d paths of the closure", from, n)
}

// checkTrees asserts that every path of the closure of paths is under the
// store root as in the machine's store, byte for byte; it returns how many
// paths the closure has.
func checkTrees(t *testing.T, nx *testenv.NixEnv, root string, paths ...string) int {
	t.Helper()
	closure := closureOf(t, nx, paths...)
	for _, p := range closure {
		testenv.TreeEqual(t, p, filepath.Join(root, p))
	}
	return len(closure)
}

// checkRefused asserts that Nix refuses the cache's paths when it trusts
// only pub.
func checkRefused(t *testing.T, nx *testenv.NixEnv, from, pub string, paths ...string) {
	t.Helper()
	_, err := nx.CopyFrom(t, from, pub, paths...)
	if err == nil {
		t.Fatalf("nix copy --from %s trusting only %s succeeded; want a signature failure", from, pub)
	}
	// Nix 2.8 says "… lacks a valid signature"; Nix 2.34 (and 2.26) say
	// "… lacks a signature by a trusted key".
	if msg := err.Error(); !strings.Contains(msg, "lacks a valid signature") && !strings.Contains(msg, "lacks a signature by a trusted key") {
		t.Fatalf("nix copy failed, but not for the signature (%s): %v", testenv.NixVersion(), err)
	}
	t.Logf("as expected, Nix refused the paths: they lack a signature by %s", pub)
}

// bucketProblems lists the bucket and returns every way it is not a
// closed cache: a .narinfo that does not parse, whose NAR is missing, or
// one of whose references has no .narinfo; with orphans also a NAR that
// no .narinfo names and a NAR listing without its .narinfo. It also
// returns how many .narinfo files it saw.
func bucketProblems(t *testing.T, c *minio.Client, bucket string, orphans bool) (problems []string, narinfos int) {
	t.Helper()
	objs := objects(t, c, bucket)
	named := make(map[string]bool)
	for key := range objs {
		if !strings.HasSuffix(key, ".narinfo") {
			continue
		}
		narinfos++
		ni, err := narinfo.Parse(strings.NewReader(readObject(t, c, bucket, key)))
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: unparsable: %v", key, err))
			continue
		}
		named[ni.URL] = true
		if _, ok := objs[ni.URL]; !ok {
			problems = append(problems, fmt.Sprintf("%s names NAR %s, which is gone", key, ni.URL))
		}
		for _, r := range ni.References {
			if _, ok := objs[r[:32]+".narinfo"]; !ok {
				problems = append(problems, fmt.Sprintf("%s refers to %s, whose .narinfo is gone", key, r))
			}
		}
	}
	for key := range objs {
		if !orphans {
			break
		}
		if strings.HasPrefix(key, "nar/") && !named[key] {
			problems = append(problems, fmt.Sprintf("NAR %s is named by no .narinfo", key))
		}
		if strings.HasSuffix(key, ".ls") {
			if _, ok := objs[strings.TrimSuffix(key, ".ls")+".narinfo"]; !ok {
				problems = append(problems, fmt.Sprintf("NAR listing %s has no .narinfo", key))
			}
		}
	}
	return problems, narinfos
}

// checkClosed asserts that every .narinfo in the bucket parses and has
// its NAR and the .narinfos of its references, and with orphans that
// every NAR and NAR listing belongs to a .narinfo (bucketProblems); the
// test goes on after a problem.
func checkClosed(t *testing.T, c *minio.Client, bucket string, orphans bool) {
	t.Helper()
	problems, _ := bucketProblems(t, c, bucket, orphans)
	for _, p := range problems {
		t.Error(p)
	}
}

// mustBeValid fails the test at once if the bucket holds a .narinfo that
// does not parse or whose NAR or references are missing, and returns how
// many .narinfo files it holds.
func mustBeValid(t *testing.T, m *testenv.MinIOServer, bucket, when string) int {
	t.Helper()
	problems, n := bucketProblems(t, m.Client(t), bucket, false)
	for _, p := range problems {
		t.Errorf("%s: %s", when, p)
	}
	if len(problems) > 0 {
		t.FailNow()
	}
	return n
}

// countNarinfos lists the bucket and counts its .narinfo files.
func countNarinfos(t *testing.T, m *testenv.MinIOServer, bucket string) int {
	t.Helper()
	n := 0
	for obj := range m.Client(t).ListObjects(context.Background(), bucket, minio.ListObjectsOptions{}) {
		if obj.Err != nil {
			t.Fatalf("list %s: %v", bucket, obj.Err)
		}
		if strings.HasSuffix(obj.Key, ".narinfo") {
			n++
		}
	}
	return n
}

// objects lists a bucket: key → ETag.
func objects(t *testing.T, c *minio.Client, bucket string) map[string]string {
	t.Helper()
	m := make(map[string]string)
	for o := range c.ListObjects(context.Background(), bucket, minio.ListObjectsOptions{Recursive: true}) {
		if o.Err != nil {
			t.Fatalf("list %s: %v", bucket, o.Err)
		}
		m[o.Key] = o.ETag
	}
	return m
}

// readObject reads an object of the bucket whole.
func readObject(t *testing.T, c *minio.Client, bucket, key string) string {
	t.Helper()
	obj, err := c.GetObject(context.Background(), bucket, key, minio.GetObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer obj.Close()
	data, err := io.ReadAll(obj)
	if err != nil {
		t.Fatalf("read %s: %v", key, err)
	}
	return string(data)
}

// narinfoURL reads the URL line of a path's .narinfo in the bucket.
func narinfoURL(t *testing.T, c *minio.Client, bucket, path string) string {
	t.Helper()
	for _, line := range strings.Split(readObject(t, c, bucket, hashOf(path)+".narinfo"), "\n") {
		if u, ok := strings.CutPrefix(line, "URL: "); ok {
			return u
		}
	}
	t.Fatalf("%s.narinfo has no URL line", hashOf(path))
	return ""
}

func hashOf(path string) string { return filepath.Base(path)[:32] }
