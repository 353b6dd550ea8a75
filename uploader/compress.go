package uploader

import (
	"fmt"
	"io"
	"runtime"
	"sync"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
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

// bigNAR is the NAR size from which zstd compresses on every core.
const bigNAR = 16 << 20

// writer returns a compressing writer into w; closing it flushes the
// compressed stream but does not close w.
func (c Compression) writer(w io.Writer, narSize uint64) (io.WriteCloser, error) {
	switch c {
	case Zstd:
		conc := 1
		if narSize >= bigNAR {
			conc = runtime.GOMAXPROCS(0)
		}
		return zstd.NewWriter(w, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderConcurrency(conc),
			zstd.WithWindowSize(windowFor(narSize)))
	case XZ:
		return xz.NewWriter(w)
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

// maxWindow is zstd's window for large NARs: what the zstd command line
// uses at level 3 (windowLog 21), which bounds the memory per stream.
const maxWindow = 2 << 20

// windowFor keeps zstd's window no larger than the data, so small NARs do
// not allocate 8 MiB windows.
func windowFor(narSize uint64) int {
	w := zstd.MinWindowSize
	for uint64(w) < narSize && w < maxWindow {
		w <<= 1
	}
	return w
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }
