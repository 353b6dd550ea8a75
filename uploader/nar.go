package uploader

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/nixpush/nixpush/layout"

	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/nixpush/nixpush/narpack"
	"github.com/nixpush/nixpush/nix"
	"github.com/nixpush/nixpush/store"
)

// narKey names a NAR object by its NAR hash, which the Nix database knows
// before packing, so the upload can start before compression ends.
func narKey(info nix.PathInfo, c narpack.Compression) string {
	return layout.NarKey(nixbase32.EncodeToString(info.NarHash.Digest()), c.Ext())
}

// packed describes a NAR after it has been packed, compressed and
// uploaded.
type packed struct {
	narpack.Packed
	narinfo string    // the signed .narinfo, set by the Uploader once the NAR is in
	at      time.Time // when the Uploader began the upload
}

// pack is narpack.Pack, with a NAR unlike the Nix database's marked
// permanent: packing it again cannot help.
func pack(info nix.PathInfo, c narpack.Compression, list bool, w io.Writer) (packed, error) {
	p, err := narpack.Pack(info, c, list, w)
	return packed{Packed: p}, permanentMismatch(err)
}

// permanentMismatch marks err permanent when it is narpack's
// ErrHashMismatch, and returns it unchanged otherwise.
func permanentMismatch(err error) error {
	if errors.Is(err, narpack.ErrHashMismatch) {
		return store.Permanent(err)
	}
	return err
}

// buffers holds the in-memory NARs of small paths between uploads.
var buffers = sync.Pool{New: func() any { return new(bytes.Buffer) }}

func getBuffer() *bytes.Buffer { return buffers.Get().(*bytes.Buffer) }

func putBuffer(b *bytes.Buffer) {
	if b.Cap() > 2*narpack.SmallNAR {
		return // an odd large one: let it go
	}
	b.Reset()
	buffers.Put(b)
}

// packAndPut packs and uploads the NAR of info under key. Small NARs are packed
// in memory and sent with one PUT; large ones stream through a pipe into a
// multipart upload that is aborted if packing fails.
func packAndPut(ctx context.Context, s store.Store, info nix.PathInfo, c narpack.Compression, list bool, key string) (packed, error) {
	if info.NarSize <= narpack.SmallNAR {
		narBuf, fileBuf := getBuffer(), getBuffer()
		defer putBuffer(narBuf)
		defer putBuffer(fileBuf)
		file, p, err := narpack.PackSmall(info, c, list, narBuf, fileBuf)
		if err != nil {
			return packed{}, permanentMismatch(err)
		}
		return packed{Packed: p}, s.Put(ctx, key, bytes.NewReader(file), int64(len(file)), "application/x-nix-nar")
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
