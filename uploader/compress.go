package uploader

import (
	"fmt"
	"io"
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
// compressed stream but does not close w.
func (c Compression) writer(w io.Writer, narSize uint64) (io.WriteCloser, error) {
	switch c {
	case Zstd:
		window := windowFor(narSize)
		if window == maxWindow {
			return getStreamEncoder(w)
		}
		return zstd.NewWriter(w, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderConcurrency(1),
			zstd.WithWindowSize(window))
	case XZ:
		return newXZWriter(w, narSize)
	case None:
		return nopCloser{w}, nil
	}
	return nil, fmt.Errorf("compression %q: want zstd, xz or none", c)
}

// sharedZstd is the encoder small NARs are compressed with, one call each
// (EncodeAll is safe for concurrent use and keeps a pool of encoder states),
// at the same level as the streaming writer.
var sharedZstd = sync.OnceValues(func() (*zstd.Encoder, error) {
	return zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault),
		zstd.WithEncoderConcurrency(runtime.GOMAXPROCS(0)), zstd.WithWindowSize(windowFor(smallNAR)))
})

// maxWindow is zstd's window for large NARs, which bounds the memory per
// stream: the encoder keeps a history of twice the window. 1 MiB rather
// than the 2 MiB of the zstd command line at level 3 keeps the daemon under
// 48 MiB with two large NARs streaming, at the cost of matches 1-2 MiB
// apart. (The encoder's low-memory mode kept 2 MiB with a history of the
// window plus one block, but then moves the whole window at every block:
// daemon CPU for 10 x 50 MiB 1.04 -> 1.37-1.49 s.)
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

// streamEncoders recycles the zstd encoders of large NARs, one for each
// stream bigStreams allows: an encoder's window and match tables were most
// of what a push allocated, and so most of the garbage collector's work.
// Each encodes on a second goroutine while the next block fills (a stream
// encoder uses no more than that), so one large NAR still keeps two cores
// busy with hashing and compressing.
var streamEncoders = make(chan *zstd.Encoder, bigStreams)

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
// resumed (resume.go records it and starts over when it changed). Keep
// it in step with writer.
func (c Compression) Settings(narSize uint64) string {
	switch c {
	case Zstd:
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
