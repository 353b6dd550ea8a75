package e2e

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/minio/minio-go/v7"

	"github.com/nixpush/nixpush/internal/testenv"
)

// TestZstdLargeNARInFrames pushes a 24 MiB path with zstd to a file://
// cache and to MinIO (a multipart upload): its NAR is several independent
// zstd frames, compressed on every core, the same bytes in both caches,
// and real Nix fetches it from each (decompressing every frame and
// checking the NAR hash and the signature). The daemons are told to use
// frames (NIXPUSH_ZSTD_FRAMES=on): by default they do only with more than
// two cores.
func TestZstdLargeNARInFrames(t *testing.T) {
	m := testenv.MinIO(t)
	m.MakeBucket(t, "frames", true)
	nx := testenv.Nix(t)
	sec, pub := keys(t, "nixpush-e2e-frames-1")
	out := nx.Build(t, fmt.Sprintf(`derivation { name = "zstd-frames"; system = builtins.currentSystem; builder = "/bin/sh";
  args = [ "-c" "PATH=/bin:/usr/bin; mkdir $out; head -c 12M /dev/urandom > $out/random; yes 'nixpush frames %s' | head -c 12M > $out/text" ]; }`, seed()))

	framesOn := "NIXPUSH_ZSTD_FRAMES=on"
	file := startDaemon(t, []string{framesOn}, "--secret-key-file", sec)
	if o, err := file.CLI("push", "--wait", out[0]); err != nil {
		t.Fatalf("nixpush push --wait (file://): %v\n%s", err, o)
	}
	s3 := startDaemon(t, append(m.CredentialsEnv(), framesOn), "--store-uri", m.StoreURI("frames"), "--secret-key-file", sec)
	if o, err := s3.CLI("push", "--wait", out[0]); err != nil {
		t.Fatalf("nixpush push --wait (MinIO): %v\n%s", err, o)
	}

	cache := filepath.Join(file.StateDir, "cache")
	nars, _ := filepath.Glob(filepath.Join(cache, "nar", "*.nar.zst"))
	if len(nars) != 1 {
		t.Fatalf("want one .nar.zst in %s, found %v", cache, nars)
	}
	fromFile, err := os.ReadFile(nars[0])
	if err != nil {
		t.Fatal(err)
	}
	frames, err := zstdFrames(fromFile)
	if err != nil {
		t.Fatalf("%s: %v", nars[0], err)
	}
	t.Logf("%s: %d bytes in %d zstd frames", filepath.Base(nars[0]), len(fromFile), frames)
	if frames < 6 {
		t.Errorf("the NAR of a 24 MiB path is %d zstd frame(s); want one per 4 MiB (at least 6)", frames)
	}
	key := "nar/" + filepath.Base(nars[0])
	obj, err := m.Client(t).GetObject(context.Background(), "frames", key, minio.GetObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	fromS3, err := io.ReadAll(obj)
	obj.Close()
	if err != nil {
		t.Fatalf("get %s from MinIO: %v", key, err)
	}
	if !bytes.Equal(fromS3, fromFile) {
		t.Errorf("the same NAR packed for MinIO (%d bytes) and for file:// (%d bytes): not the same bytes", len(fromS3), len(fromFile))
	}

	checkFetched(t, nx, "file://"+cache, pub, out...)
	checkFetched(t, nx, m.HTTPURL("frames"), pub, out...)
}

// zstdFrames counts the frames of a zstd stream by walking its frame and
// block headers (RFC 8878, section 3.1), skipping skippable frames.
func zstdFrames(b []byte) (int, error) {
	n := 0
	for len(b) > 0 {
		if len(b) < 4 {
			return n, fmt.Errorf("frame %d: %d bytes left, no magic number", n, len(b))
		}
		magic := binary.LittleEndian.Uint32(b)
		if magic&0xFFFFFFF0 == 0x184D2A50 { // skippable frame
			if len(b) < 8 {
				return n, fmt.Errorf("frame %d: truncated skippable frame", n)
			}
			size := int(binary.LittleEndian.Uint32(b[4:]))
			if len(b) < 8+size {
				return n, fmt.Errorf("frame %d: truncated skippable frame", n)
			}
			b = b[8+size:]
			continue
		}
		if magic != 0xFD2FB528 {
			return n, fmt.Errorf("frame %d: magic %#x, not zstd's", n, magic)
		}
		if len(b) < 5 {
			return n, fmt.Errorf("frame %d: truncated header", n)
		}
		fhd := b[4]
		fcsFlag, single, checksum, dictFlag := fhd>>6, fhd&0x20 != 0, fhd&0x04 != 0, fhd&0x03
		h := 5
		if !single {
			h++ // window descriptor
		}
		h += []int{0, 1, 2, 4}[dictFlag]
		fcs := []int{0, 2, 4, 8}[fcsFlag]
		if fcsFlag == 0 && single {
			fcs = 1
		}
		h += fcs
		if len(b) < h {
			return n, fmt.Errorf("frame %d: truncated header", n)
		}
		b = b[h:]
		for {
			if len(b) < 3 {
				return n, fmt.Errorf("frame %d: truncated block header", n)
			}
			bh := uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16
			last, typ, size := bh&1 != 0, (bh>>1)&3, int(bh>>3)
			switch typ {
			case 1: // RLE: one byte
				size = 1
			case 3:
				return n, fmt.Errorf("frame %d: reserved block type", n)
			}
			if len(b) < 3+size {
				return n, fmt.Errorf("frame %d: truncated block", n)
			}
			b = b[3+size:]
			if last {
				break
			}
		}
		if checksum {
			if len(b) < 4 {
				return n, fmt.Errorf("frame %d: truncated checksum", n)
			}
			b = b[4:]
		}
		n++
	}
	if n == 0 {
		return 0, fmt.Errorf("no zstd frame")
	}
	return n, nil
}
