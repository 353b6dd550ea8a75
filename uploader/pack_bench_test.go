package uploader

import (
	"crypto/rand"
	"fmt"
	"io"
	"testing"
)

// BenchmarkPack measures NAR → compress → hash on one path of 64 MiB, half
// random and half compressible, written to io.Discard.
func BenchmarkPack(b *testing.B) {
	fs := newFakeStore(&testing.T{})
	fs.dir = b.TempDir()
	data := make([]byte, 64<<20)
	rand.Read(data[:len(data)/2])
	for i := len(data) / 2; i < len(data); i++ {
		data[i] = byte("nixpush packs NARs "[i%19])
	}
	p := fs.add(&testing.T{}, "big", data)
	info := fs.infos[p]
	for _, c := range []Compression{Zstd, XZ, None} {
		b.Run(fmt.Sprint(c), func(b *testing.B) {
			if c == XZ && testing.Short() {
				b.Skip("xz is slow")
			}
			b.SetBytes(int64(info.NarSize))
			for b.Loop() {
				if _, err := pack(info, c, false, io.Discard); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
