package narpack

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
	gonar "github.com/nix-community/go-nix/pkg/nar"
)

// BenchmarkPack measures NAR → compress → hash on one path of 64 MiB, half
// random and half compressible, written to io.Discard.
func BenchmarkPack(b *testing.B) {
	data := make([]byte, 64<<20)
	rand.Read(data[:len(data)/2])
	for i := len(data) / 2; i < len(data); i++ {
		data[i] = byte("nixpush packs NARs "[i%19])
	}
	info := fileInfo(b, b.TempDir(), data)
	for _, c := range []Compression{Zstd, XZ, None} {
		b.Run(fmt.Sprint(c), func(b *testing.B) {
			if c == XZ && testing.Short() {
				b.Skip("xz is slow")
			}
			b.SetBytes(int64(info.NarSize))
			for b.Loop() {
				if _, err := Pack(info, c, false, io.Discard); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkFrameRatio measures what compressing in independent frames
// costs in size: the NAR of each directory in NIXPUSH_RATIO_DIRS (colon
// separated; default: the Go toolchain's binaries and sources) compressed
// as one zstd stream with the same window, and in frames of frameSize as
// large NARs are. It reports the extra compressed bytes, in percent.
func BenchmarkFrameRatio(b *testing.B) {
	dirs := os.Getenv("NIXPUSH_RATIO_DIRS")
	if dirs == "" {
		goroot := runtime.GOROOT()
		dirs = filepath.Join(goroot, "pkg", "tool") + ":" + filepath.Join(goroot, "src")
	}
	for _, dir := range strings.Split(dirs, ":") {
		b.Run(filepath.Base(dir), func(b *testing.B) {
			var nar bytes.Buffer
			if err := gonar.DumpPath(&nar, dir); err != nil {
				b.Fatal(err)
			}
			var stream bytes.Buffer
			for b.Loop() {
				stream.Reset()
				w, err := zstd.NewWriter(&stream, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderConcurrency(1),
					zstd.WithWindowSize(maxWindow))
				if err != nil {
					b.Fatal(err)
				}
				w.Write(nar.Bytes())
				if err := w.Close(); err != nil {
					b.Fatal(err)
				}
			}
			var frames bytes.Buffer
			fw, err := newFrameWriter(&frames)
			if err != nil {
				b.Fatal(err)
			}
			fw.Write(nar.Bytes())
			if err := fw.Close(); err != nil {
				b.Fatal(err)
			}
			loss := 100 * (float64(frames.Len())/float64(stream.Len()) - 1)
			b.ReportMetric(float64(nar.Len())/(1<<20), "nar-MiB")
			b.ReportMetric(100*float64(stream.Len())/float64(nar.Len()), "stream-%")
			b.ReportMetric(loss, "frames-extra-%")
			b.Logf("%s: NAR %d bytes; one stream %d; frames of %d MiB %d (%+.2f%%)", dir, nar.Len(), stream.Len(), frameSize>>20, frames.Len(), loss)
		})
	}
}
