package nix

import (
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/nix-community/go-nix/pkg/nixhash"
)

// Fingerprint is the text a Nix signature covers:
// 1;<path>;sha256:<nix32 NAR hash>;<NAR size>;<sorted full reference paths>.
// go-nix's NarInfo.Fingerprint does not sort references; Nix does.
func Fingerprint(info PathInfo) string {
	var b strings.Builder
	b.WriteString("1;")
	b.WriteString(info.Path)
	b.WriteByte(';')
	b.WriteString(info.NarHash.Format(nixhash.NixBase32, true))
	b.WriteByte(';')
	b.WriteString(strconv.FormatUint(info.NarSize, 10))
	b.WriteByte(';')
	refs := sortedCopy(info.References)
	b.WriteString(strings.Join(refs, ","))
	return b.String()
}

// Upload describes the compressed NAR file a narinfo points to.
type Upload struct {
	URL         string // relative to the cache root, e.g. nar/<hash>.nar.zst
	Compression string // none, zstd, xz
	FileHash    nixhash.Hash
	FileSize    uint64
}

// NarInfo builds the .narinfo for a path whose NAR was uploaded as up,
// keeping the path's deriver, content address and existing signatures, and
// adding a signature by each key (which replaces an older one of the same
// name).
func NarInfo(info PathInfo, up Upload, keys ...signature.SecretKey) (*narinfo.NarInfo, error) {
	ni := &narinfo.NarInfo{
		StorePath:   info.Path,
		URL:         up.URL,
		Compression: up.Compression,
		FileHash:    withEncoding(up.FileHash),
		FileSize:    up.FileSize,
		NarHash:     withEncoding(info.NarHash),
		NarSize:     info.NarSize,
		CA:          info.CA,
	}
	for _, r := range sortedCopy(info.References) {
		ni.References = append(ni.References, filepath.Base(r))
	}
	if info.Deriver != "" {
		ni.Deriver = filepath.Base(info.Deriver)
	}
	fp := Fingerprint(info)
	ours := make([]signature.Signature, 0, len(keys))
	mine := map[string]bool{}
	for _, key := range keys {
		sig, err := key.Sign(nil, fp)
		if err != nil {
			return nil, fmt.Errorf("sign %s: %w", info.Path, err)
		}
		ours = append(ours, sig)
		mine[sig.Name] = true
	}
	for _, s := range info.Sigs {
		sig, err := signature.ParseSignature(s)
		if err != nil || mine[sig.Name] {
			continue
		}
		ni.Signatures = append(ni.Signatures, sig)
	}
	ni.Signatures = append(ni.Signatures, ours...)
	return ni, nil
}

// VerifyNarInfo reports whether ni carries a valid signature by pub over the
// fingerprint Nix computes for it.
func VerifyNarInfo(ni *narinfo.NarInfo, pub signature.PublicKey) bool {
	info := PathInfo{Path: ni.StorePath, NarHash: ni.NarHash.Hash, NarSize: ni.NarSize}
	dir := filepath.Dir(ni.StorePath)
	for _, r := range ni.References {
		info.References = append(info.References, dir+"/"+r)
	}
	fp := Fingerprint(info)
	for _, s := range ni.Signatures {
		if pub.Verify(fp, s) {
			return true
		}
	}
	return false
}

func withEncoding(h nixhash.Hash) *nixhash.HashWithEncoding {
	if len(h.Digest()) == 0 {
		return nil // unknown: the narinfo leaves the line out
	}
	return nixhash.MustNewHashWithEncoding(h.Algo(), h.Digest(), nixhash.NixBase32, true)
}

func sortedCopy(s []string) []string {
	c := append([]string(nil), s...)
	slices.Sort(c)
	return c
}

// CacheInfo is the text of a binary cache's nix-cache-info.
func CacheInfo(storeDir string, priority int) string {
	return fmt.Sprintf("StoreDir: %s\nWantMassQuery: 1\nPriority: %d\n", storeDir, priority)
}
