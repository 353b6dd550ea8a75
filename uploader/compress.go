package uploader

import (
	"fmt"
	"io"

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
// compressed stream but does not close w. A zstd NAR larger than smallNAR
// is compressed in independent frames on every core (frames.go); a
// smaller one in one stream with a window no larger than the NAR.
func (c Compression) writer(w io.Writer, narSize uint64) (io.WriteCloser, error) {
	switch c {
	case Zstd:
		if narSize > smallNAR {
			return newFrameWriter(w)
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

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }
