package narpack

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"

	"github.com/nix-community/go-nix/pkg/nixhash"

	"github.com/nixpush/nixpush/internal/partbuf"
	"github.com/nixpush/nixpush/nix"
)

// SmallNAR is the NAR size up to which a path is compressed in memory
// (PackSmall) and sent with one PUT of known size; larger NARs stream
// (Pack) into multipart uploads.
const SmallNAR = 4 << 20

// BigStreams bounds the large NARs packed at once (partbuf.BigStreams).
const BigStreams = partbuf.BigStreams

// ErrHashMismatch reports a path whose NAR no longer matches the hash the
// Nix database registered for it (the store was modified behind Nix's back).
var ErrHashMismatch = errors.New("NAR hash mismatch")

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

// Packed describes a NAR after it has been packed and compressed.
type Packed struct {
	NarSize  uint64
	FileHash nixhash.Hash
	FileSize uint64
	Listing  []byte // the .ls JSON, when asked for
}

// Pack writes the compressed NAR of info.Path to w in one pass, hashing the
// NAR and the compressed file on the way. It fails with ErrHashMismatch when
// the NAR differs from what the Nix database registered, before returning,
// so a caller streaming w to a store can refuse to complete the object.
func Pack(info nix.PathInfo, c Compression, list bool, w io.Writer) (Packed, error) {
	file := newCounter()
	zw, err := c.writer(io.MultiWriter(file, w), info.NarSize)
	if err != nil {
		return Packed{}, err
	}
	narc := newCounter()
	bw := bufio.NewWriterSize(io.MultiWriter(narc, zw), 256<<10)
	ls, err := dumpPath(bw, info.Path, list)
	if err != nil {
		zw.Close()
		return Packed{}, fmt.Errorf("pack %s: %w", info.Path, err)
	}
	if err := bw.Flush(); err != nil {
		zw.Close()
		return Packed{}, fmt.Errorf("pack %s: %w", info.Path, err)
	}
	if err := zw.Close(); err != nil {
		return Packed{}, fmt.Errorf("compress %s: %w", info.Path, err)
	}
	got := narc.hash()
	if narc.n != info.NarSize || !bytes.Equal(got.Digest(), info.NarHash.Digest()) {
		return Packed{}, fmt.Errorf("%w: %s: the Nix database has %s (%d bytes), the store has %s (%d bytes); run nix-store --verify --check-contents",
			ErrHashMismatch, info.Path, info.NarHash.Format(nixhash.NixBase32, true), info.NarSize,
			got.Format(nixhash.NixBase32, true), narc.n)
	}
	return withListing(Packed{NarSize: narc.n, FileHash: file.hash(), FileSize: file.n}, ls)
}

// withListing adds the JSON of listing ls (when there is one) to p.
func withListing(p Packed, ls *lsNode) (Packed, error) {
	if ls == nil {
		return p, nil
	}
	var err error
	p.Listing, err = listingJSON(ls)
	return p, err
}

// PackSmall packs a small NAR in memory: the NAR into narBuf, checked
// against the database, then compressed in one call into fileBuf (zstd
// through the encoder of large NARs' frames, one frame, so a path costs
// no encoder set-up). It returns
// the compressed bytes, which live in narBuf or fileBuf.
func PackSmall(info nix.PathInfo, c Compression, list bool, narBuf, fileBuf *bytes.Buffer) ([]byte, Packed, error) {
	ls, err := dumpPath(narBuf, info.Path, list)
	if err != nil {
		return nil, Packed{}, fmt.Errorf("pack %s: %w", info.Path, err)
	}
	narBytes := narBuf.Bytes()
	sum := sha256.Sum256(narBytes)
	if uint64(len(narBytes)) != info.NarSize || !bytes.Equal(sum[:], info.NarHash.Digest()) {
		got := nixhash.MustNewHash(nixhash.SHA256, sum[:])
		return nil, Packed{}, fmt.Errorf("%w: %s: the Nix database has %s (%d bytes), the store has %s (%d bytes); run nix-store --verify --check-contents",
			ErrHashMismatch, info.Path, info.NarHash.Format(nixhash.NixBase32, true), info.NarSize,
			got.Format(nixhash.NixBase32, true), len(narBytes))
	}
	var file []byte
	switch c {
	case Zstd:
		enc, err := frameEncoder()
		if err != nil {
			return nil, Packed{}, err
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
			return nil, Packed{}, fmt.Errorf("compress %s: %w", info.Path, err)
		}
		file = fileBuf.Bytes()
	}
	fileSum := sha256.Sum256(file)
	p, err := withListing(Packed{NarSize: info.NarSize, FileHash: *nixhash.MustNewHash(nixhash.SHA256, fileSum[:]),
		FileSize: uint64(len(file))}, ls)
	return file, p, err
}
