package uploader

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/nix-community/go-nix/pkg/nixhash"

	"github.com/nixpush/nixpush/nix"
)

// halfRandom is n bytes, the first half random, the rest compressible.
func halfRandom(n int) []byte {
	data := make([]byte, n)
	rand.Read(data[:n/2])
	for i := n / 2; i < n; i++ {
		data[i] = "nixpush frames NARs "[i%20]
	}
	return data
}

// framesOf compresses data through a frameWriter, written in pieces of
// piece bytes.
func framesOf(t *testing.T, data []byte, piece int) []byte {
	t.Helper()
	var out bytes.Buffer
	w, err := newFrameWriter(&out)
	if err != nil {
		t.Fatal(err)
	}
	for p := data; len(p) > 0; {
		n := min(piece, len(p))
		if _, err := w.Write(p[:n]); err != nil {
			t.Fatal(err)
		}
		p = p[n:]
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// oneByOne is the frame layout spelled out: each frameSize chunk of data
// compressed alone by an encoder of one state, the frames concatenated.
func oneByOne(t *testing.T, data []byte) []byte {
	t.Helper()
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderConcurrency(1),
		zstd.WithWindowSize(maxWindow), zstd.WithZeroFrames(true))
	if err != nil {
		t.Fatal(err)
	}
	var out []byte
	for len(data) > frameSize {
		out = enc.EncodeAll(data[:frameSize], out)
		data = data[frameSize:]
	}
	return enc.EncodeAll(data, out)
}

// TestFrameWriter compresses data of sizes around the frame boundaries
// (and none) in independent frames: the output decompresses to the data,
// is the same whatever the size of the writes, and is exactly the frames
// of its chunks compressed one by one by an encoder of a single state, so
// it depends neither on the number of cores nor on scheduling.
func TestFrameWriter(t *testing.T) {
	data := halfRandom(3*frameSize + 12345)
	dec, err := zstd.NewReader(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	for _, tc := range []struct {
		name string
		size int
	}{
		{"empty", 0},
		{"one byte", 1},
		{"a frame less one byte", frameSize - 1},
		{"one frame", frameSize},
		{"a frame and one byte", frameSize + 1},
		{"two frames", 2 * frameSize},
		{"three frames and a bit", len(data)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := data[:tc.size]
			out := framesOf(t, in, 256<<10)
			back, err := dec.DecodeAll(out, nil)
			if err != nil {
				t.Fatalf("decompress %d bytes of frames: %v", len(out), err)
			}
			if !bytes.Equal(back, in) {
				t.Fatalf("decompressed %d bytes, want the %d written", len(back), len(in))
			}
			if want := oneByOne(t, in); !bytes.Equal(out, want) {
				t.Fatalf("%d bytes of frames, not the %d of its chunks compressed one by one", len(out), len(want))
			}
			if odd := framesOf(t, in, 7777); !bytes.Equal(odd, out) {
				t.Fatalf("writes of 7777 bytes gave other frames than writes of 256 KiB")
			}
			if tc.size == 0 && len(out) == 0 {
				t.Fatal("no bytes for empty input: not a zstd stream")
			}
		})
	}
}

// TestFrameWritersShareBuffers runs more large NARs at once than there
// are frame buffers: each waits for buffers, none deadlocks, every output
// is right, and every buffer is back in the pool at the end.
func TestFrameWritersShareBuffers(t *testing.T) {
	bufs := frameBufs()
	n := bufs.Max() + 3
	inputs := make([][]byte, n)
	for i := range inputs {
		inputs[i] = halfRandom(2*frameSize + i*100_003)
	}
	outs := make([][]byte, n)
	var wg sync.WaitGroup
	for i := range inputs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var out bytes.Buffer
			w, err := newFrameWriter(&out)
			if err == nil {
				_, err = w.Write(inputs[i])
			}
			if err == nil {
				err = w.Close()
			}
			if err != nil {
				t.Error(err)
			}
			outs[i] = out.Bytes()
		}()
	}
	finished := make(chan struct{})
	go func() { wg.Wait(); close(finished) }()
	select {
	case <-finished:
	case <-time.After(2 * time.Minute):
		t.Fatalf("%d frame writers sharing %d buffers: not done after 2 minutes", n, bufs.Max())
	}
	for i := range inputs {
		if want := oneByOne(t, inputs[i]); !bytes.Equal(outs[i], want) {
			t.Errorf("writer %d: %d bytes of frames, want %d", i, len(outs[i]), len(want))
		}
	}
	if got := bufs.Free(); got != bufs.Made() {
		t.Errorf("%d of %d frame buffers back in the pool", got, bufs.Made())
	}
}

// TestFrameWriterRefused: a destination that refuses writes stops the
// writer with its error (Write or Close says so), and the buffers of the
// frames in flight go back to the pool.
func TestFrameWriterRefused(t *testing.T) {
	bufs := frameBufs()
	data := halfRandom(4 * frameSize)
	w, err := newFrameWriter(refuser{})
	if err != nil {
		t.Fatal(err)
	}
	var werr error
	for range 20 {
		if _, werr = w.Write(data); werr != nil {
			break
		}
	}
	cerr := w.Close()
	if werr == nil && cerr == nil {
		t.Fatal("writing to a destination that refuses: no error")
	}
	for _, err := range []error{werr, cerr} {
		if err != nil && err.Error() != "refused" {
			t.Errorf("error %q, want the destination's (refused)", err)
		}
	}
	if got := bufs.Free(); got != bufs.Made() {
		t.Errorf("%d of %d frame buffers back in the pool", got, bufs.Made())
	}
	if _, err := w.Write([]byte("x")); !errors.Is(err, errFrameWriterClosed) {
		t.Errorf("write after close: %v, want %v", err, errFrameWriterClosed)
	}
}

// TestPackLarge packs a large NAR as putNAR does, in frames and in one
// stream: the file hash and size are of the compressed bytes written, the
// NAR size and hash of the NAR, the same path packs to the same bytes
// again, and in frames it is the frames of its chunks.
func TestPackLarge(t *testing.T) {
	fs := newFakeStore(t)
	p := fs.add(t, "large", halfRandom(2*frameSize+333))
	info := fs.infos[p]
	if info.NarSize <= smallNAR {
		t.Fatalf("NAR of %d bytes: not a large one", info.NarSize)
	}
	was := zstdFrames
	t.Cleanup(func() { zstdFrames = was })
	for _, frames := range []bool{true, false} {
		t.Run(fmt.Sprintf("frames=%v", frames), func(t *testing.T) {
			zstdFrames = func() bool { return frames }
			packLarge(t, info, frames)
		})
	}
}

func packLarge(t *testing.T, info nix.PathInfo, frames bool) {
	var first []byte
	for round := range 2 {
		var out bytes.Buffer
		pk, err := pack(info, Zstd, false, &out)
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(out.Bytes())
		if pk.fileSize != uint64(out.Len()) || !bytes.Equal(pk.fileHash.Digest(), sum[:]) {
			t.Fatalf("packed says file %d bytes %s; wrote %d bytes %s", pk.fileSize, pk.fileHash.Format(nixhash.NixBase32, true),
				out.Len(), nixhash.MustNewHash(nixhash.SHA256, sum[:]).Format(nixhash.NixBase32, true))
		}
		if pk.narSize != info.NarSize {
			t.Fatalf("packed says NAR %d bytes; the database %d", pk.narSize, info.NarSize)
		}
		nar, err := zstdDecode(out.Bytes())
		if err != nil {
			t.Fatal(err)
		}
		narSum := sha256.Sum256(nar)
		if uint64(len(nar)) != info.NarSize || !bytes.Equal(narSum[:], info.NarHash.Digest()) {
			t.Fatalf("the frames decompress to %d bytes that are not the NAR", len(nar))
		}
		if round == 0 {
			first = bytes.Clone(out.Bytes())
		} else if !bytes.Equal(first, out.Bytes()) {
			t.Fatal("the same path packed twice: different bytes")
		}
		if inFrames := bytes.Equal(out.Bytes(), oneByOne(t, nar)); inFrames != frames {
			t.Fatalf("packed in frames: %v; want %v", inFrames, frames)
		}
	}
}

func zstdDecode(b []byte) ([]byte, error) {
	dec, err := zstd.NewReader(nil)
	if err != nil {
		return nil, err
	}
	defer dec.Close()
	out, err := dec.DecodeAll(b, nil)
	if err != nil {
		return nil, fmt.Errorf("zstd: %w", err)
	}
	return out, nil
}

var _ io.Writer = refuser{}

// TestSettingsNameFrames: a large NAR packs to other bytes in frames than
// in one stream, so the settings a resumable upload records differ too,
// and a daemon restarted on another number of cores starts the upload
// over rather than checking parts against bytes it no longer makes.
func TestSettingsNameFrames(t *testing.T) {
	was := zstdFrames
	t.Cleanup(func() { zstdFrames = was })
	settings := map[bool]string{}
	for _, frames := range []bool{true, false} {
		zstdFrames = func() bool { return frames }
		settings[frames] = Zstd.Settings(2 * frameSize)
		if small := Zstd.Settings(smallNAR); strings.Contains(small, "frames") {
			t.Errorf("frames=%v: a small NAR's settings %q name frames; it is always one stream", frames, small)
		}
	}
	if settings[true] == settings[false] {
		t.Fatalf("a large NAR's settings are %q in frames and in one stream alike", settings[true])
	}
}
