package nix

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	"github.com/nix-community/go-nix/pkg/derivation"
	"github.com/nix-community/go-nix/pkg/nixhash"
)

// ErrInvalidPath reports a store path the Nix database does not register as
// valid (never built, garbage-collected, or not a store path at all).
var ErrInvalidPath = errors.New("not a valid path in the Nix store")

// PathInfo is what the Nix database knows about one valid store path.
type PathInfo struct {
	Path       string       // full store path
	NarHash    nixhash.Hash // sha256 of the path's NAR serialisation
	NarSize    uint64
	References []string // full store paths, sorted; may include Path itself
	Deriver    string   // full .drv path, or ""
	Sigs       []string // signatures already on the path ("name:base64")
	CA         string   // content address ("fixed:r:sha256:…"), or ""
}

// Client reads path info from the local Nix installation with Nix's own
// command-line tools, which work the same from Nix 2.8 to current and Lix
// whether the store is local or behind nix-daemon.
type Client struct {
	StoreDir string   // "" means DefaultStoreDir
	BinDir   string   // directory holding nix and nix-store; "" means $PATH
	Env      []string // extra environment for the tools (e.g. NIX_REMOTE)
}

func (c *Client) storeDir() string {
	if c.StoreDir == "" {
		return DefaultStoreDir
	}
	return c.StoreDir
}

func (c *Client) bin(name string) string {
	if c.BinDir == "" {
		return name
	}
	return filepath.Join(c.BinDir, name)
}

// maxArgs bounds the paths passed to one tool invocation, far below the
// kernel's argument-size limit.
const maxArgs = 2000

// Query returns the path info of paths (not their closure), in no set order.
func (c *Client) Query(ctx context.Context, paths []string) ([]PathInfo, error) {
	return c.pathInfo(ctx, paths, false)
}

// QueryClosure returns the path info of every path in the closure of paths,
// in no set order: one process per 2000 roots, never one per path.
func (c *Client) QueryClosure(ctx context.Context, paths []string) ([]PathInfo, error) {
	return c.pathInfo(ctx, paths, true)
}

func (c *Client) pathInfo(ctx context.Context, paths []string, recursive bool) ([]PathInfo, error) {
	seen := make(map[string]bool)
	var out []PathInfo
	for start := 0; start < len(paths); start += maxArgs {
		chunk := paths[start:min(start+maxArgs, len(paths))]
		// Without substitute=false, Nix tries to substitute a path that is
		// not valid (network retries, seconds) before saying so.
		args := []string{"--extra-experimental-features", "nix-command", "path-info", "--json", "--option", "substitute", "false"}
		if recursive {
			args = append(args, "--recursive")
		}
		args = append(args, "--")
		args = append(args, chunk...)
		stdout, err := c.run(ctx, "nix", args...)
		if err != nil {
			if strings.Contains(err.Error(), "is not valid") || strings.Contains(err.Error(), "does not exist") ||
				strings.Contains(err.Error(), "is not in the Nix store") {
				return nil, fmt.Errorf("%w: %v", ErrInvalidPath, err)
			}
			return nil, err
		}
		infos, err := ParsePathInfoJSON(stdout, c.storeDir())
		if err != nil {
			return nil, err
		}
		for _, info := range infos {
			if !seen[info.Path] {
				seen[info.Path] = true
				out = append(out, info)
			}
		}
	}
	return out, nil
}

// jsonPathInfo is one entry of `nix path-info --json` in any Nix version.
type jsonPathInfo struct {
	Path       string   `json:"path"`
	Valid      *bool    `json:"valid"`
	NarHash    string   `json:"narHash"`
	NarSize    uint64   `json:"narSize"`
	References []string `json:"references"`
	Deriver    *string  `json:"deriver"`
	Signatures []string `json:"signatures"`
	CA         *string  `json:"ca"`
}

// ParsePathInfoJSON reads the output of `nix path-info --json` in both of its
// shapes: an array of objects with a "path" field (Nix ≤ 2.18 and Lix) and an
// object keyed by path whose invalid entries are null (Nix ≥ 2.19).
func ParsePathInfoJSON(data []byte, storeDir string) ([]PathInfo, error) {
	data = bytes.TrimSpace(data)
	var entries []jsonPathInfo
	switch {
	case len(data) > 0 && data[0] == '[':
		if err := json.Unmarshal(data, &entries); err != nil {
			return nil, fmt.Errorf("parse nix path-info --json: %w", err)
		}
	case len(data) > 0 && data[0] == '{':
		var m map[string]*jsonPathInfo
		if err := json.Unmarshal(data, &m); err != nil {
			return nil, fmt.Errorf("parse nix path-info --json: %w", err)
		}
		for p, e := range m {
			if e == nil {
				return nil, fmt.Errorf("%w: %s", ErrInvalidPath, p)
			}
			e.Path = p
			entries = append(entries, *e)
		}
	default:
		return nil, fmt.Errorf("parse nix path-info --json: unexpected output %.40q", data)
	}
	infos := make([]PathInfo, 0, len(entries))
	for _, e := range entries {
		if e.Valid != nil && !*e.Valid {
			return nil, fmt.Errorf("%w: %s", ErrInvalidPath, e.Path)
		}
		info, err := e.toPathInfo(storeDir)
		if err != nil {
			return nil, err
		}
		infos = append(infos, info)
	}
	return infos, nil
}

func (e jsonPathInfo) toPathInfo(storeDir string) (PathInfo, error) {
	path, err := StorePath(storeDir, e.Path)
	if err != nil {
		return PathInfo{}, err
	}
	algo := nixhash.SHA256
	h, err := nixhash.ParseAny(e.NarHash, &algo)
	if err != nil {
		return PathInfo{}, fmt.Errorf("path info of %s: narHash %q: %w", path, e.NarHash, err)
	}
	info := PathInfo{Path: path, NarHash: h.Hash, NarSize: e.NarSize}
	if len(e.Signatures) > 0 {
		// Nix 2.34 prints "signatures": [] where 2.8 prints none: no
		// signatures are nil either way, as the serve protocol gives them.
		info.Sigs = e.Signatures
	}
	for _, r := range e.References {
		if !strings.HasPrefix(r, "/") {
			r = storeDir + "/" + r
		}
		ref, err := StorePath(storeDir, r)
		if err != nil {
			return PathInfo{}, fmt.Errorf("path info of %s: reference: %w", path, err)
		}
		info.References = append(info.References, ref)
	}
	slices.Sort(info.References)
	if e.Deriver != nil && *e.Deriver != "" {
		info.Deriver = *e.Deriver
		if !strings.HasPrefix(info.Deriver, "/") {
			info.Deriver = storeDir + "/" + info.Deriver
		}
	}
	if e.CA != nil {
		info.CA = *e.CA
	}
	if info.NarSize == 0 {
		return PathInfo{}, fmt.Errorf("path info of %s: narSize is 0", path)
	}
	return info, nil
}

// Outputs returns the output paths of a derivation. It reads the .drv file
// itself (no process) and asks nix-store only for outputs the file does not
// name (floating content-addressed derivations).
func (c *Client) Outputs(ctx context.Context, drvPath string) ([]string, error) {
	drvPath, err := StorePath(c.storeDir(), drvPath)
	if err != nil {
		return nil, err
	}
	if !strings.HasSuffix(drvPath, ".drv") {
		return nil, fmt.Errorf("%s: not a derivation (.drv)", drvPath)
	}
	outs, err := StaticOutputs(drvPath)
	if err != nil {
		return nil, err
	}
	if len(outs) > 0 {
		return outs, nil
	}
	if ca, err := FloatingCA(drvPath); err == nil && ca {
		// nix-store --query --outputs refuses these in Nix 2.8 ("Cannot
		// use output path of floating content-addressed derivation").
		rs, err := c.Realisations(ctx, drvPath)
		if err != nil {
			return nil, err
		}
		if len(rs) == 0 {
			return nil, fmt.Errorf("%w: %s is content-addressed and has no realisations (not built yet?)", ErrInvalidPath, drvPath)
		}
		for _, r := range rs {
			outs = append(outs, r.OutPath)
		}
		slices.Sort(outs)
		return outs, nil
	}
	stdout, err := c.run(ctx, "nix-store", "--query", "--outputs", "--", drvPath)
	if err != nil {
		return nil, err
	}
	return strings.Fields(string(stdout)), nil
}

// StaticOutputs reads the output paths a .drv file names, sorted, without
// running Nix. It returns none for a floating content-addressed derivation,
// whose outputs only Nix knows, and ErrInvalidPath when the file is missing.
func StaticOutputs(drvPath string) ([]string, error) {
	drv, err := readDerivation(drvPath)
	if errors.Is(err, ErrInvalidPath) {
		return nil, err
	}
	if err != nil {
		return nil, nil // let Nix read what go-nix cannot
	}
	var outs []string
	for _, o := range drv.Outputs {
		if o.Path == "" {
			return nil, nil
		}
		outs = append(outs, o.Path)
	}
	slices.Sort(outs)
	return outs, nil
}

// readDerivation reads a .drv file with go-nix; a missing file is
// ErrInvalidPath.
func readDerivation(drvPath string) (*derivation.Derivation, error) {
	f, err := os.Open(drvPath)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidPath, err)
	}
	defer f.Close()
	drv, err := derivation.ReadDerivation(f)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", drvPath, err)
	}
	return drv, nil
}

func (c *Client) run(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, c.bin(name), args...)
	cmd.Env = append(os.Environ(), c.Env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		msg := strings.TrimSpace(stderr.String())
		if i := strings.LastIndex(msg, "\n"); i >= 0 {
			msg = msg[i+1:]
		}
		return nil, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args[:min(len(args), 5)], " "), err, msg)
	}
	return out, nil
}

// IsInvalid reports whether err says a path is not valid in the store.
func IsInvalid(err error) bool { return errors.Is(err, ErrInvalidPath) }
