package store

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/nixpush/nixpush/internal/testenv"
)

// minioStore starts a MinIO with a private bucket and opens it as a store
// the way the daemon does, credentials from the environment.
func minioStore(t *testing.T, bucket string) (*testenv.MinIOServer, *S3Store) {
	t.Helper()
	m := testenv.MinIO(t)
	m.MakeBucket(t, bucket, false)
	for _, kv := range m.CredentialsEnv() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	st, err := Open(context.Background(), m.StoreURI(bucket), Options{})
	if err != nil {
		t.Fatal(err)
	}
	return m, st.(*S3Store)
}

// TestS3PutStream streams objects of unknown size to a real MinIO: one
// short of a part goes up with one PUT, more as a multipart upload whose
// parts are sent while the next one is read; every size reads back whole.
func TestS3PutStream(t *testing.T) {
	_, s := minioStore(t, "stream")
	ctx := context.Background()
	data := make([]byte, 2*PartSize+PartSize/2)
	rand.Read(data)
	for _, size := range []int{0, 1, PartSize - 1, PartSize, PartSize + 1, 2 * PartSize, len(data)} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			key := fmt.Sprintf("nar/%d", size)
			// A pipe, as from the packer: reads return what one write gave.
			pr, pw := io.Pipe()
			go func() {
				for b := data[:size]; len(b) > 0; b = b[min(len(b), 100<<10):] {
					pw.Write(b[:min(len(b), 100<<10)])
				}
				pw.Close()
			}()
			if err := s.Put(ctx, key, pr, -1, "application/x-nix-nar"); err != nil {
				t.Fatal(err)
			}
			got, err := s.Get(ctx, key)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, data[:size]) {
				t.Fatalf("read back %d bytes, not the %d written", len(got), size)
			}
		})
	}
}

// TestS3PutStreamAbort fails the reader after two parts, as packing does on
// a NAR hash mismatch: no object may appear, and no upload may linger.
func TestS3PutStreamAbort(t *testing.T) {
	m, st := minioStore(t, "abort")
	ctx := context.Background()
	boom := errors.New("packing failed")
	for _, size := range []int{PartSize / 2, 2*PartSize + 5} {
		key := fmt.Sprintf("nar/bad-%d", size)
		r := io.MultiReader(bytes.NewReader(make([]byte, size)), errReader{boom})
		if err := st.Put(ctx, key, r, -1, "application/x-nix-nar"); !errors.Is(err, boom) {
			t.Fatalf("size %d: err = %v; want the reader's error", size, err)
		}
		if ok, err := st.Has(ctx, key); ok || err != nil {
			t.Fatalf("size %d: object left behind (has %v, %v)", size, ok, err)
		}
	}
	for u := range m.Client(t).ListIncompleteUploads(ctx, "abort", "", true) {
		if u.Err != nil {
			t.Fatal(u.Err)
		}
		t.Fatalf("Multipart upload of %s left behind", u.Key)
	}
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }
