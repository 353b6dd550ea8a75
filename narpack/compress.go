package narpack

import (
	"fmt"
	"io"
	"os"
	"runtime"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// Compression is the compression of uploaded NARs, named as in narinfo.
type Compression string

const (
	Zstd Compression = "zstd"
	XZ   Compression = "xz"
	None Compression = "none"
)

// ParseCompression checks a --compression value.
func ParseCompression(s string) (Compression, error) {
	switch c := Compression(s); c {
	case Zstd, XZ, None:
		return c, nil
	case "":
		return Zstd, nil
	}
	return "", fmt.Errorf("compression %q: want zstd, xz or none", s)
}

// Ext is the file name extension of a NAR compressed so.
func (c Compression) Ext() string {
	switch c {
	case Zstd:
		return ".zst"
	case XZ:
		return ".xz"
	}
	return ""
}

// writer returns a compressing writer into w; closing it flushes the
// compressed stream but does not close w. A zstd NAR larger than SmallNAR
// is compressed in independent frames on every core (frames.go) when
// zstdFrames says so, else in one stream through a pooled encoder; a
// smaller one in one stream with a window no larger than the NAR.
func (c Compression) writer(w io.Writer, narSize uint64) (io.WriteCloser, error) {
	switch c {
	case Zstd:
		if narSize > SmallNAR {
			if zstdFrames() {
				return newFrameWriter(w)
			}
			return getStreamEncoder(w)
		}
		return zstd.NewWriter(w, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderConcurrency(1),
			zstd.WithWindowSize(windowFor(narSize)))
	case XZ:
		return newXZWriter(w, narSize)
	case None:
		return nopCloser{w}, nil
	}
	return nil, fmt.Errorf("compression %q: want zstd, xz or none", c)
}

// maxWindow is zstd's window, the farthest back a match may reach, which
// bounds the memory of each encoder state: it keeps a history of twice the
// window. 1 MiB rather than the 2 MiB of the zstd command line at level 3
// keeps the daemon small, at the cost of matches 1-2 MiB apart.
const maxWindow = 1 << 20

// windowFor keeps zstd's window no larger than the data, so small NARs do
// not allocate 8 MiB windows.
func windowFor(narSize uint64) int {
	w := zstd.MinWindowSize
	for uint64(w) < narSize && w < maxWindow {
		w <<= 1
	}
	return w
}

// zstdFrames tells whether large NARs are compressed in independent frames
// (frames.go) or in one stream each. One stream keeps two cores busy (its
// encoder compresses one block while the next fills, beside the goroutine
// that packs and hashes the NAR), so frames are used only with more than
// two cores (GOMAXPROCS), where they let one NAR use up to frameCores
// cores to compress. On two cores, frames were slower: one 1 GiB path
// in the sid root, medians of 5 rounds side by side, 17.9 s in frames
// against 13.0 s in one stream, for the same daemon CPU (3.2 s), and the
// daemon's peak RSS 69 MiB against 34 MiB (docs/performance.md).
//
// So the compressed bytes of a large NAR depend on the cores: one stream
// with two or fewer, frames with more; for a given number of cores (and
// NIXPUSH_ZSTD_FRAMES) they are the same every time. NIXPUSH_ZSTD_FRAMES
// in the daemon's environment overrides the choice: "on" or "off" (the
// tests and benchmarks use it; "" or "auto" is the default).
var zstdFrames = sync.OnceValue(func() bool {
	switch os.Getenv("NIXPUSH_ZSTD_FRAMES") {
	case "on":
		return true
	case "off":
		return false
	}
	return runtime.GOMAXPROCS(0) > 2
})

// streamEncoders recycles the zstd encoders of large NARs compressed in one
// stream, one for each stream BigStreams allows: an encoder's window and
// match tables were most of what a push allocated, and so most of the
// garbage collector's work. Each encodes on a second goroutine while the
// next block fills (a stream encoder uses no more than that), so one large
// NAR still keeps two cores busy with hashing and compressing.
var streamEncoders = make(chan *zstd.Encoder, BigStreams)

func getStreamEncoder(w io.Writer) (io.WriteCloser, error) {
	select {
	case e := <-streamEncoders:
		e.Reset(w)
		return pooledEncoder{e}, nil
	default:
	}
	e, err := zstd.NewWriter(w, zstd.WithEncoderLevel(zstd.SpeedDefault),
		zstd.WithEncoderConcurrency(min(2, runtime.GOMAXPROCS(0))), zstd.WithWindowSize(maxWindow))
	if err != nil {
		return nil, err
	}
	return pooledEncoder{e}, nil
}

// pooledEncoder returns its encoder to streamEncoders when it closes
// cleanly; an encoder left mid-stream by an error is dropped.
type pooledEncoder struct{ *zstd.Encoder }

func (p pooledEncoder) Close() error {
	if err := p.Encoder.Close(); err != nil {
		return err
	}
	select {
	case streamEncoders <- p.Encoder:
	default:
	}
	return nil
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

// Settings names what, besides the NAR, decides the bytes c compresses a
// NAR of narSize bytes to: the same NAR under the same settings always
// compresses to the same bytes, which is what lets a cut-off upload be
// resumed (the uploader records it and starts over when it changed). Keep
// it in step with writer.
func (c Compression) Settings(narSize uint64) string {
	switch c {
	case Zstd:
		if narSize > SmallNAR && zstdFrames() {
			return fmt.Sprintf("zstd level=default window=%d frames=%d", maxWindow, frameSize)
		}
		return fmt.Sprintf("zstd level=default window=%d stream", windowFor(narSize))
	case XZ:
		if xzTool() == "" {
			return "xz go-encoder"
		}
		threads, block := 1, uint64(0)
		if cores := runtime.GOMAXPROCS(0); narSize >= xzThreadMin && cores > 1 {
			threads, block = cores, max(uint64(xzBlockMin), narSize/uint64(cores)+1)
		}
		return fmt.Sprintf("xz tool preset=%s dict=%d threads=%d block=%d", xzPreset, xzDictFor(narSize), threads, block)
	}
	return string(c)
}
