package nix

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/nix-community/go-nix/pkg/nixhash"
)

// ParseNarInfo parses a .narinfo as leniently as Nix does. It reads the
// lines nixpush needs and leaves out those it does not know (another
// tool's), where go-nix's parser refuses them; a Sig line it cannot parse
// (another tool's scheme, any string) is left out too, as Nix ignores a
// signature it cannot check. A field that does not parse (NarHash, say)
// is an error, but the lines after it are read all the same: with an
// error, what it read (the URL, the References) comes back too. It
// allocates no line buffer of 1 MiB per .narinfo as go-nix's does, which
// a walk of ten thousand felt.
func ParseNarInfo(data []byte) (*narinfo.NarInfo, error) {
	ni := &narinfo.NarInfo{}
	var first error // the first field that does not parse
	text := string(data)
	for len(text) > 0 {
		var line string
		line, text, _ = strings.Cut(text, "\n")
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		v = strings.TrimPrefix(v, " ")
		var err error
		switch k {
		case "StorePath":
			ni.StorePath = v
		case "URL":
			ni.URL = v
		case "Compression":
			ni.Compression = v
		case "FileHash":
			ni.FileHash, err = nixhash.ParseAny(v, nil)
		case "FileSize":
			ni.FileSize, err = strconv.ParseUint(v, 10, 64)
		case "NarHash":
			ni.NarHash, err = nixhash.ParseAny(v, nil)
		case "NarSize":
			ni.NarSize, err = strconv.ParseUint(v, 10, 64)
		case "References":
			ni.References = strings.Fields(v)
		case "Deriver":
			if v != "unknown-deriver" {
				ni.Deriver = v
			}
		case "System":
			ni.System = v
		case "Sig":
			if sig, serr := signature.ParseSignature(v); serr == nil {
				ni.Signatures = append(ni.Signatures, sig)
			}
		case "CA":
			ni.CA = v
		}
		if err != nil && first == nil {
			first = fmt.Errorf("line %q: %v", line, err)
		}
	}
	if ni.Compression == "" {
		ni.Compression = "bzip2" // as Nix reads a .narinfo without the line
	}
	if first != nil {
		return ni, first
	}
	if ni.StorePath == "" || ni.URL == "" || ni.NarHash == nil || ni.NarSize == 0 {
		return ni, errors.New("lacks StorePath, URL, NarHash or NarSize")
	}
	return ni, nil
}

// CompactNarInfo is a .narinfo cut to the lines ParseNarInfo reads, for
// a walk's cache to keep: ParseNarInfo gives the same from it as from the
// whole text. A .narinfo ParseNarInfo cannot read comes back whole.
func CompactNarInfo(data []byte) []byte {
	ni, err := ParseNarInfo(data)
	if err != nil {
		return data
	}
	var b bytes.Buffer
	b.Grow(len(data))
	line := func(k, v string) {
		b.WriteString(k)
		b.WriteString(": ")
		b.WriteString(v)
		b.WriteByte('\n')
	}
	line("StorePath", ni.StorePath)
	line("URL", ni.URL)
	line("Compression", ni.Compression)
	if ni.FileSize != 0 {
		line("FileSize", strconv.FormatUint(ni.FileSize, 10))
	}
	line("NarHash", ni.NarHash.String())
	line("NarSize", strconv.FormatUint(ni.NarSize, 10))
	line("References", strings.Join(ni.References, " "))
	if ni.Deriver != "" {
		line("Deriver", ni.Deriver)
	}
	for _, s := range ni.Signatures {
		line("Sig", s.String())
	}
	if ni.CA != "" {
		line("CA", ni.CA)
	}
	return b.Bytes()
}
