package nix

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/nix-community/go-nix/pkg/narinfo/signature"
)

// ErrRealisationFormat reports `nix realisation info --json` output in a
// shape this nixpush does not know (Nix 2.35 replaced realisations by
// build traces): retrying cannot help.
var ErrRealisationFormat = errors.New("unknown realisation format")

// Realisation is what Nix records when it builds an output of a
// content-addressed derivation (experimental feature ca-derivations): the
// output's id ("sha256:<derivation hash modulo>!<output name>") and the
// store path it was built at. A binary cache holds it as
// realisations/<id>.doi, through which a consumer with ca-derivations
// substitutes the output of a derivation it has not built.
type Realisation struct {
	ID      string
	OutPath string // full store path
	// JSON is the object as Nix printed it, the .doi file's contents.
	JSON json.RawMessage
	// DrvPath (full store path) and Output key the output's build trace
	// entry (Nix 2.35; buildtrace.go), and TraceSigs are that entry's
	// signatures. ID is empty for an entry read from Nix 2.35.
	DrvPath   string
	Output    string
	TraceSigs []TraceSignature
}

// Realisations asks Nix for the realisations of the outputs of drvPath
// (`nix realisation info --json`, Nix 2.4 and later with ca-derivations).
// An input-addressed derivation has none before Nix 2.34 (which records
// one for each output built with ca-derivations enabled).
//
// Nix 2.13 and later name a derivation's outputs drv^* and read a bare .drv
// as the file itself: Nix 2.34 answers [{"opaquePath": drv}] for it, even
// for a .drv that does not exist. Nix before 2.13 reads a bare .drv as its
// outputs and refuses drv^* ("is not a valid URL"). So drv^* is asked
// first, and the bare .drv only when Nix does not understand that.
func (c *Client) Realisations(ctx context.Context, drvPath string) ([]Realisation, error) {
	drvPath, err := StorePath(c.storeDir(), drvPath)
	if err != nil {
		return nil, err
	}
	args := []string{"--extra-experimental-features", "nix-command ca-derivations", "realisation", "info", "--json", "--option", "substitute", "false"}
	out, err := c.run(ctx, "nix", append(args, drvPath+"^*")...)
	if err != nil && strings.Contains(err.Error(), "is not a valid URL") {
		out, err = c.run(ctx, "nix", append(args, drvPath)...)
	}
	if err != nil {
		if strings.Contains(err.Error(), "does not exist") || strings.Contains(err.Error(), "is not valid") {
			return nil, fmt.Errorf("%w: %v", ErrInvalidPath, err)
		}
		return nil, err
	}
	return ParseRealisationInfo(out, c.storeDir(), drvPath)
}

// ParseRealisations reads the JSON array `nix realisation info --json`
// prints (Nix 2.8 to 2.34: objects with id, outPath as a base name or a
// full path, signatures, dependentRealisations).
func ParseRealisations(data []byte, storeDir string) ([]Realisation, error) {
	var raw []json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("parse nix realisation info --json: %w: %v (want a JSON array)", ErrRealisationFormat, err)
	}
	var out []Realisation
	for _, r := range raw {
		var fields struct {
			ID         string `json:"id"`
			OutPath    string `json:"outPath"`
			OpaquePath string `json:"opaquePath"`
		}
		if err := json.Unmarshal(r, &fields); err == nil && fields.OpaquePath != "" {
			// What Nix 2.13 and later print for a bare .drv: the file, not
			// its outputs.
			return nil, fmt.Errorf("parse nix realisation info --json: %w: %.200s: a path, not a realisation (a bare .drv asked of Nix 2.13 or later?)", ErrRealisationFormat, r)
		}
		if err := json.Unmarshal(r, &fields); err != nil || fields.ID == "" || fields.OutPath == "" {
			return nil, fmt.Errorf("parse nix realisation info --json: %w: %.200s: want an object with id and outPath", ErrRealisationFormat, r)
		}
		if !strings.Contains(fields.ID, "!") || strings.ContainsAny(fields.ID, "/\x00") {
			return nil, fmt.Errorf("%w: realisation id %q: want sha256:<hash>!<output>", ErrRealisationFormat, fields.ID)
		}
		p := fields.OutPath
		if !strings.HasPrefix(p, "/") {
			p = storeDir + "/" + p
		}
		p, err := StorePath(storeDir, p)
		if err != nil {
			return nil, fmt.Errorf("realisation %s: %w", fields.ID, err)
		}
		out = append(out, Realisation{ID: fields.ID, OutPath: p, JSON: r})
	}
	return out, nil
}

// Signed returns the realisation's JSON with a signature by each of keys
// added to its signatures (replacing one by the same key name), over the
// fingerprint Nix 2.8 signs and checks (when it copies a realisation into
// a store that requires signatures): the object without "signatures",
// keys sorted, no spaces.
func (r Realisation) Signed(keys ...signature.SecretKey) ([]byte, error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(r.JSON, &obj); err != nil {
		return nil, fmt.Errorf("realisation %s: %w", r.ID, err)
	}
	var sigs []string
	if s, ok := obj["signatures"]; ok {
		if err := json.Unmarshal(s, &sigs); err != nil {
			return nil, fmt.Errorf("realisation %s: signatures: %w", r.ID, err)
		}
	}
	delete(obj, "signatures")
	fp, err := json.Marshal(obj) // map keys sorted, values compacted, as nlohmann's dump()
	if err != nil {
		return nil, err
	}
	for _, key := range keys {
		sig, err := key.Sign(nil, string(fp))
		if err != nil {
			return nil, err
		}
		name, _, _ := strings.Cut(sig.String(), ":")
		kept := sigs[:0]
		for _, s := range sigs {
			if !strings.HasPrefix(s, name+":") {
				kept = append(kept, s)
			}
		}
		sigs = append(kept, sig.String())
	}
	b, err := json.Marshal(sigs)
	if err != nil {
		return nil, err
	}
	obj["signatures"] = b
	return json.Marshal(obj)
}

// FloatingCA reports whether drvPath is a floating content-addressed
// derivation: one whose output paths the .drv file does not name, known
// only once built, from their realisations.
func FloatingCA(drvPath string) (bool, error) {
	drv, err := readDerivation(drvPath)
	if err != nil {
		return false, err
	}
	for _, o := range drv.Outputs {
		if o.Path == "" && o.HashAlgorithm != "" {
			return true, nil
		}
	}
	return false, nil
}
