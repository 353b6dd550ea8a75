package uploader

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"hash"
	"io"
	"sync"
	"time"

	"github.com/nix-community/go-nix/pkg/nixbase32"
	"github.com/nix-community/go-nix/pkg/nixhash"

	"github.com/nixpush/nixpush/layout"
	"github.com/nixpush/nixpush/nix"
	"github.com/nixpush/nixpush/store"
)

// smallNAR is the NAR size up to which a path is compressed in memory and
// sent with one PUT of known size; larger NARs stream as multipart uploads.
const smallNAR = 4 << 20

// narKey names a NAR object by its NAR hash, which the Nix database knows
// before packing, so the upload can start before compression ends.
func narKey(info nix.PathInfo, c Compression) string {
	return layout.NarKey(nixbase32.EncodeToString(info.NarHash.Digest()), c.Ext())
}

// counter is a hash plus a byte count.
type counter struct {
	h hash.Hash
	n uint64
}

func newCounter() *counter { return &counter{h: sha256.New()} }

func (c *counter) Write(p []byte) (int, error) {
	c.h.Write(p)
	c.n += uint64(len(p))
	return len(p), nil
}

func (c *counter) hash() nixhash.Hash {
	return *nixhash.MustNewHash(nixhash.SHA256, c.h.Sum(nil))
}

// packed describes a NAR after it has been packed and compressed.
type packed struct {
	narSize  uint64
	fileHash nixhash.Hash
	fileSize uint64
	listing  []byte    // the .ls JSON, when asked for
	narinfo  string    // the signed .narinfo, set by the Uploader once the NAR is in
	at       time.Time // when the Uploader began the upload
}

// pack writes the compressed NAR of info.Path to w in one pass, hashing the
// NAR and the compressed file on the way. It fails with ErrHashMismatch when
// the NAR differs from what the Nix database registered, before returning,
// so a caller streaming w to a store can refuse to complete the object.
func pack(info nix.PathInfo, c Compression, list bool, w io.Writer) (packed, error) {
	file := newCounter()
	zw, err := c.writer(io.MultiWriter(file, w), info.NarSize)
	if err != nil {
		return packed{}, err
	}
	narc := newCounter()
	bw := bufio.NewWriterSize(io.MultiWriter(narc, zw), 256<<10)
	ls, err := dumpPath(bw, info.Path, list)
	if err != nil {
		zw.Close()
		return packed{}, fmt.Errorf("pack %s: %w", info.Path, err)
	}
	if err := bw.Flush(); err != nil {
		zw.Close()
		return packed{}, fmt.Errorf("pack %s: %w", info.Path, err)
	}
	if err := zw.Close(); err != nil {
		return packed{}, fmt.Errorf("compress %s: %w", info.Path, err)
	}
	got := narc.hash()
	if narc.n != info.NarSize || !bytes.Equal(got.Digest(), info.NarHash.Digest()) {
		return packed{}, store.Permanent(fmt.Errorf("%w: %s: the Nix database has %s (%d bytes), the store has %s (%d bytes); run nix-store --verify --check-contents",
			ErrHashMismatch, info.Path, info.NarHash.Format(nixhash.NixBase32, true), info.NarSize,
			got.Format(nixhash.NixBase32, true), narc.n))
	}
	return withListing(packed{narSize: narc.n, fileHash: file.hash(), fileSize: file.n}, ls)
}

// withListing adds the JSON of listing ls (when there is one) to p.
func withListing(p packed, ls *lsNode) (packed, error) {
	if ls == nil {
		return p, nil
	}
	var err error
	p.listing, err = listingJSON(ls)
	return p, err
}

// packSmall packs a small NAR in memory: the NAR into narBuf, checked
// against the database, then compressed in one call into fileBuf (zstd
// through the encoder of large NARs' frames, one frame, so a path costs
// no encoder set-up). It returns
// the compressed bytes, which live in narBuf or fileBuf.
func packSmall(info nix.PathInfo, c Compression, list bool, narBuf, fileBuf *bytes.Buffer) ([]byte, packed, error) {
	ls, err := dumpPath(narBuf, info.Path, list)
	if err != nil {
		return nil, packed{}, fmt.Errorf("pack %s: %w", info.Path, err)
	}
	narBytes := narBuf.Bytes()
	sum := sha256.Sum256(narBytes)
	if uint64(len(narBytes)) != info.NarSize || !bytes.Equal(sum[:], info.NarHash.Digest()) {
		got := nixhash.MustNewHash(nixhash.SHA256, sum[:])
		return nil, packed{}, store.Permanent(fmt.Errorf("%w: %s: the Nix database has %s (%d bytes), the store has %s (%d bytes); run nix-store --verify --check-contents",
			ErrHashMismatch, info.Path, info.NarHash.Format(nixhash.NixBase32, true), info.NarSize,
			got.Format(nixhash.NixBase32, true), len(narBytes)))
	}
	var file []byte
	switch c {
	case Zstd:
		enc, err := frameEncoder()
		if err != nil {
			return nil, packed{}, err
		}
		fileBuf.Grow(len(narBytes) + len(narBytes)/64 + 1024) // zstd's worst case, so no reallocation
		file = enc.EncodeAll(narBytes, fileBuf.AvailableBuffer())
	case None:
		file = narBytes
	default:
		zw, err := c.writer(fileBuf, info.NarSize)
		if err == nil {
			_, err = zw.Write(narBytes)
		}
		if err == nil {
			err = zw.Close()
		}
		if err != nil {
			return nil, packed{}, fmt.Errorf("compress %s: %w", info.Path, err)
		}
		file = fileBuf.Bytes()
	}
	fileSum := sha256.Sum256(file)
	p, err := withListing(packed{narSize: info.NarSize, fileHash: *nixhash.MustNewHash(nixhash.SHA256, fileSum[:]),
		fileSize: uint64(len(file))}, ls)
	return file, p, err
}

// buffers holds the in-memory NARs of small paths between uploads.
var buffers = sync.Pool{New: func() any { return new(bytes.Buffer) }}

func getBuffer() *bytes.Buffer { return buffers.Get().(*bytes.Buffer) }

func putBuffer(b *bytes.Buffer) {
	if b.Cap() > 2*smallNAR {
		return // an odd large one: let it go
	}
	b.Reset()
	buffers.Put(b)
}

// putNAR packs and uploads the NAR of info under key. Small NARs are packed
// in memory and sent with one PUT; large ones stream through a pipe into a
// multipart upload that is aborted if packing fails.
func putNAR(ctx context.Context, s store.Store, info nix.PathInfo, c Compression, list bool, key string) (packed, error) {
	if info.NarSize <= smallNAR {
		narBuf, fileBuf := getBuffer(), getBuffer()
		defer putBuffer(narBuf)
		defer putBuffer(fileBuf)
		file, p, err := packSmall(info, c, list, narBuf, fileBuf)
		if err != nil {
			return packed{}, err
		}
		return p, s.Put(ctx, key, bytes.NewReader(file), int64(len(file)), "application/x-nix-nar")
	}
	pr, pw := io.Pipe()
	done := make(chan struct{})
	var p packed
	var perr error
	go func() {
		defer close(done)
		p, perr = pack(info, c, list, pw)
		pw.CloseWithError(perr)
	}()
	err := s.Put(ctx, key, pr, -1, "application/x-nix-nar")
	pr.CloseWithError(fmt.Errorf("upload ended"))
	<-done
	if perr != nil {
		return packed{}, perr
	}
	return p, err
}
