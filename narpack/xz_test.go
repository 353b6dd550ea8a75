package narpack

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/ulikunitz/xz"
)

// TestXZTool compresses through the xz tool, one thread and several, into
// streams that decompress to the input; and a destination that refuses
// writes ends the process with an error instead of leaving it blocked.
func TestXZTool(t *testing.T) {
	if XZTool() == "" {
		t.Fatal("xz is not on PATH; install xz-utils (scripts/test.sh does)")
	}
	data := make([]byte, 9<<20)
	rand.Read(data[:len(data)/2])
	for _, size := range []int{0, 1000, len(data)} {
		var out bytes.Buffer
		w, err := newXZWriter(&out, uint64(size))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(data[:size]); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		r, err := xz.NewReader(&out)
		if err != nil {
			t.Fatalf("%d bytes: %v", size, err)
		}
		back, err := io.ReadAll(r)
		if err != nil || !bytes.Equal(back, data[:size]) {
			t.Fatalf("%d bytes: read back %d bytes, %v", size, len(back), err)
		}
	}

	done := make(chan error, 1)
	go func() {
		w, err := newXZWriter(refuser{}, uint64(len(data)))
		if err == nil {
			for err == nil {
				_, err = w.Write(data)
			}
			w.Close()
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("writing to a destination that refuses: no error")
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("xz writer still blocked 2 minutes after its destination refused")
	}
}

type refuser struct{}

func (refuser) Write([]byte) (int, error) { return 0, errors.New("refused") }
