package retention

import (
	"compress/bzip2"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"

	"github.com/klauspost/compress/zstd"
	"github.com/nix-community/go-nix/pkg/nixhash"
	"github.com/nixpush/nixpush/store"
	"github.com/ulikunitz/xz"
	"golang.org/x/sync/errgroup"
)

// checkNARs downloads the NARs of full (--full), a few at once, and
// checks each against its .narinfo's NarHash and NarSize.
func (v *verifier) checkNARs(ctx context.Context, b store.Bucket, full []int32, opts VerifyOptions) error {
	g, rep := v.g, v.rep
	if opts.Jobs < 1 {
		opts.Jobs = 4
	}
	eg, ectx := errgroup.WithContext(ctx)
	eg.SetLimit(opts.Jobs)
	for _, i := range full {
		url, comp, narHash, narSize := g.url(i), g.compression(i), g.full[i].hash, g.full[i].size
		eg.Go(func() error {
			size, err := checkNAR(ectx, b, url, comp, narHash, narSize)
			v.mu.Lock()
			rep.NARs++
			rep.Bytes += size
			if opts.Checked != nil {
				opts.Checked(rep.NARs, len(full), rep.Bytes)
			}
			v.mu.Unlock()
			var bad *badNARError
			if errors.As(err, &bad) {
				v.add(i, NARHash, bad.Error())
				v.mu.Lock()
				rep.badNAR = append(rep.badNAR, url)
				v.mu.Unlock()
				return nil
			}
			if errors.Is(err, store.ErrNotExist) {
				v.add(i, NARMissing, url+" is not in the cache")
				return nil
			}
			return err
		})
	}
	return eg.Wait()
}

type badNARError struct{ msg string }

func (e *badNARError) Error() string { return e.msg }

// checkNAR downloads a NAR, decompresses it and compares its hash and
// size with the .narinfo's; it returns the compressed bytes read.
func checkNAR(ctx context.Context, b store.Bucket, url, comp, narHash string, narSize uint64) (int64, error) {
	want, err := nixhash.ParseAny(narHash, nil)
	if err != nil {
		return 0, &badNARError{fmt.Sprintf("NarHash %q: %v", narHash, err)}
	}
	rc, err := b.Open(ctx, url)
	if err != nil {
		return 0, err
	}
	defer rc.Close()
	counted := &countReader{r: rc}
	var r io.Reader = counted
	switch comp {
	case "none", "":
	case "zstd":
		d, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(1<<30))
		if err != nil {
			return 0, err
		}
		defer d.Close()
		r = d
	case "xz":
		x, err := xz.NewReader(r)
		if err != nil {
			return counted.n, &badNARError{fmt.Sprintf("%s: not xz: %v", url, err)}
		}
		r = x
	case "bzip2":
		r = bzip2.NewReader(r)
	default:
		return 0, &badNARError{fmt.Sprintf("%s: compression %q not known to verify", url, comp)}
	}
	h := sha256.New()
	size, err := io.Copy(h, r)
	if err != nil {
		if ctx.Err() != nil {
			return counted.n, ctx.Err()
		}
		return counted.n, &badNARError{fmt.Sprintf("%s: cannot decompress (%s): %v", url, comp, err)}
	}
	if uint64(size) != narSize {
		return counted.n, &badNARError{fmt.Sprintf("%s: NAR is %d bytes, the .narinfo says %d", url, size, narSize)}
	}
	if string(h.Sum(nil)) != string(want.Digest()) {
		return counted.n, &badNARError{fmt.Sprintf("%s: NAR hash differs from the .narinfo's %s", url, narHash)}
	}
	return counted.n, nil
}

type countReader struct {
	r io.Reader
	n int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}
