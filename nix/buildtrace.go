package nix

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"path"
	"regexp"
	"slices"
	"strings"

	"github.com/nix-community/go-nix/pkg/narinfo/signature"
)

// Nix 2.35 replaced realisations by build traces (build-trace-v2): an
// entry is keyed by the derivation's store path and the output's name,
// not by the derivation's hash modulo, and records the output path and
// signatures. A binary cache holds it as
// build-trace-v2/<drv base name>/<output>.doi; the body is the entry's
// value as compact JSON with sorted keys, {"outPath":<base name>,
// "signatures":[{"keyName":…,"sig":<base64>},…]}, its signatures sorted
// by key name (then signature bytes), no trailing newline. A signature
// is over the compact JSON of the whole entry without signatures:
// {"key":{"drvPath":<base name>,"outputName":…},"value":{"outPath":<base name>}}.
// Nix 2.36 checks these signatures. A content-addressed derivation with
// content-addressed inputs is recorded only under its resolved .drv
// (which the post-build hook of Nix 2.34 and later names as DRV_PATH).

// TraceSignature is a signature as a build trace entry holds it.
type TraceSignature struct {
	KeyName string `json:"keyName"`
	Sig     string `json:"sig"` // base64 of the ed25519 signature
}

// traceSig reads a signature in either spelling Nix 2.35 reads: an object
// or the older "name:base64" string.
func traceSig(raw json.RawMessage) (TraceSignature, error) {
	var s TraceSignature
	var str string
	if err := json.Unmarshal(raw, &str); err == nil {
		name, sig, ok := strings.Cut(str, ":")
		if !ok || name == "" {
			return s, fmt.Errorf("signature %q: want <key name>:<base64>", str)
		}
		s = TraceSignature{KeyName: name, Sig: sig}
	} else if err := json.Unmarshal(raw, &s); err != nil || s.KeyName == "" {
		return s, fmt.Errorf("signature %.100s: want {\"keyName\":…,\"sig\":…} or a string", raw)
	}
	if _, err := base64.StdEncoding.DecodeString(s.Sig); err != nil {
		return s, fmt.Errorf("signature by %s: %w", s.KeyName, err)
	}
	return s, nil
}

// outputName is what an output name may hold: a store path name's
// characters, which JSON carries as they are (no escaping to differ
// between Nix's encoder and Go's).
var outputName = regexp.MustCompile(`^[a-zA-Z0-9+\-._?=]+$`)

func checkOutputName(o string) error {
	if !outputName.MatchString(o) || o == "." || o == ".." {
		return fmt.Errorf("%w: output name %q", ErrRealisationFormat, o)
	}
	return nil
}

// HasTrace reports whether r names its derivation and output, which a
// build trace entry is keyed by (a realisation read from Nix 2.8 to 2.34
// does only when the derivation asked is known).
func (r Realisation) HasTrace() bool { return r.DrvPath != "" && r.Output != "" }

// TraceKey is "<drv base name>/<output>", the entry's key as the cache's
// object name spells it.
func (r Realisation) TraceKey() string { return path.Base(r.DrvPath) + "/" + r.Output }

// TraceFingerprint is the string a signature of r's build trace entry is
// made over (UnkeyedRealisation::fingerprint in Nix's realisation.cc).
func (r Realisation) TraceFingerprint() (string, error) {
	if !r.HasTrace() {
		return "", fmt.Errorf("realisation %s: %w: no derivation path and output name to key a build trace by", r.ID, ErrRealisationFormat)
	}
	if err := checkOutputName(r.Output); err != nil {
		return "", err
	}
	type key struct {
		DrvPath    string `json:"drvPath"`
		OutputName string `json:"outputName"`
	}
	type value struct {
		OutPath string `json:"outPath"`
	}
	fp, err := compactJSON(struct {
		Key   key   `json:"key"`
		Value value `json:"value"`
	}{key{path.Base(r.DrvPath), r.Output}, value{path.Base(r.OutPath)}})
	return string(fp), err
}

// TraceSigned returns the body of r's build-trace-v2/<drv>/<output>.doi:
// r's build trace signatures plus one by each of keys (replacing one by
// the same key name). Signatures r carries from a Nix 2.8 to 2.34
// realisation are not among them: those are over another string.
func (r Realisation) TraceSigned(keys ...signature.SecretKey) ([]byte, error) {
	fp, err := r.TraceFingerprint()
	if err != nil {
		return nil, err
	}
	sigs := slices.Clone(r.TraceSigs)
	for _, key := range keys {
		sig, err := key.Sign(nil, fp)
		if err != nil {
			return nil, err
		}
		sigs = slices.DeleteFunc(sigs, func(s TraceSignature) bool { return s.KeyName == sig.Name })
		sigs = append(sigs, TraceSignature{KeyName: sig.Name, Sig: base64.StdEncoding.EncodeToString(sig.Data)})
	}
	// Nix keeps them in a std::set: by key name, then signature bytes,
	// each once.
	raw := func(s TraceSignature) string {
		b, _ := base64.StdEncoding.DecodeString(s.Sig)
		return string(b)
	}
	slices.SortFunc(sigs, func(a, b TraceSignature) int {
		if c := strings.Compare(a.KeyName, b.KeyName); c != 0 {
			return c
		}
		return strings.Compare(raw(a), raw(b))
	})
	sigs = slices.CompactFunc(sigs, func(a, b TraceSignature) bool { return a.KeyName == b.KeyName && raw(a) == raw(b) })
	if sigs == nil {
		sigs = []TraceSignature{}
	}
	return compactJSON(struct {
		OutPath    string           `json:"outPath"`
		Signatures []TraceSignature `json:"signatures"`
	}{path.Base(r.OutPath), sigs})
}

// compactJSON is v as nlohmann's dump() prints it for the strings a store
// path, an output name or base64 holds: no spaces, no HTML escaping, no
// newline. (Struct fields are declared in sorted order.)
func compactJSON(v any) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}

// ParseRealisationInfo reads what `nix realisation info --json` prints
// for the outputs of drvPath, in either shape: Nix 2.8 to 2.34's objects
// with id and outPath (drvPath, when given, keys their build trace), and
// Nix 2.35's build trace entries (`nix store build-trace info --json`:
// {"key":{"drvPath","outputName"},"value":{"outPath","signatures"}}),
// which have no id and so no realisations/ object.
func ParseRealisationInfo(data []byte, storeDir, drvPath string) ([]Realisation, error) {
	var raw []json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("parse nix realisation info --json: %w: %v (want a JSON array)", ErrRealisationFormat, err)
	}
	var out []Realisation
	for _, elem := range raw {
		var entry struct {
			Key *struct {
				DrvPath    string `json:"drvPath"`
				OutputName string `json:"outputName"`
			} `json:"key"`
			Value *struct {
				OutPath    string            `json:"outPath"`
				Signatures []json.RawMessage `json:"signatures"`
			} `json:"value"`
		}
		if err := json.Unmarshal(elem, &entry); err != nil || entry.Key == nil || entry.Value == nil {
			// Nix 2.8 to 2.34.
			rs, err := ParseRealisations(append(append([]byte("["), elem...), ']'), storeDir)
			if err != nil {
				return nil, err
			}
			for _, r := range rs {
				if drvPath != "" {
					r.DrvPath = drvPath
					_, r.Output, _ = strings.Cut(r.ID, "!")
					if err := checkOutputName(r.Output); err != nil {
						return nil, fmt.Errorf("realisation %s: %w", r.ID, err)
					}
				}
				out = append(out, r)
			}
			continue
		}
		full := func(p string) (string, error) {
			if !strings.HasPrefix(p, "/") {
				p = storeDir + "/" + p
			}
			return StorePath(storeDir, p)
		}
		r := Realisation{Output: entry.Key.OutputName, JSON: elem}
		var err error
		if r.DrvPath, err = full(entry.Key.DrvPath); err != nil || !strings.HasSuffix(r.DrvPath, ".drv") {
			return nil, fmt.Errorf("parse build trace entry: %w: %.200s: key.drvPath is no derivation (%v)", ErrRealisationFormat, elem, err)
		}
		if r.OutPath, err = full(entry.Value.OutPath); err != nil {
			return nil, fmt.Errorf("parse build trace entry: %w: %.200s: value.outPath: %v", ErrRealisationFormat, elem, err)
		}
		if err := checkOutputName(r.Output); err != nil {
			return nil, fmt.Errorf("parse build trace entry %.200s: %w", elem, err)
		}
		for _, s := range entry.Value.Signatures {
			sig, err := traceSig(s)
			if err != nil {
				return nil, fmt.Errorf("parse build trace entry: %w: %v", ErrRealisationFormat, err)
			}
			r.TraceSigs = append(r.TraceSigs, sig)
		}
		out = append(out, r)
	}
	return out, nil
}
