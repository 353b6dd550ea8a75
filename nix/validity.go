package nix

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// CheckValidity splits paths into those the Nix database registers as
// valid and the others (never built, garbage-collected), keeping their
// order: one nix-store --check-validity per 2000 paths.
func (c *Client) CheckValidity(ctx context.Context, paths []string) (valid, invalid []string, err error) {
	bad := make(map[string]bool)
	for start := 0; start < len(paths); start += maxArgs {
		chunk := paths[start:min(start+maxArgs, len(paths))]
		args := append([]string{"--check-validity", "--print-invalid", "--"}, chunk...)
		cmd := exec.CommandContext(ctx, c.bin("nix-store"), args...)
		if len(c.Env) > 0 {
			cmd.Env = append(os.Environ(), c.Env...)
		}
		out, err := cmd.Output()
		if err != nil {
			return nil, nil, fmt.Errorf("nix-store --check-validity: %v (is Nix installed?)", err)
		}
		for _, p := range strings.Fields(string(out)) {
			bad[p] = true
		}
	}
	for _, p := range paths {
		if bad[p] {
			invalid = append(invalid, p)
		} else {
			valid = append(valid, p)
		}
	}
	return valid, invalid, nil
}
