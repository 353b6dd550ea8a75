package uploader

import (
	"context"
	"slices"
	"time"

	"github.com/nixpush/nixpush/nix"
	"github.com/nixpush/nixpush/store"
)

// closureInfos is queryNeeded for every root at once, with one error per
// root: it asks root by root when one invalid root would fail the others.
func (u *Uploader) closureInfos(ctx context.Context, roots []string, cutoff time.Time) (map[string]nix.PathInfo, []error) {
	errs := make([]error, len(roots))
	infos, err := u.queryNeeded(ctx, roots, cutoff)
	if err != nil && len(roots) > 1 && nix.IsInvalid(err) {
		infos = make(map[string]nix.PathInfo)
		for i, r := range roots {
			m, err := u.queryNeeded(ctx, []string{r}, cutoff)
			if err != nil {
				errs[i] = err
				continue
			}
			for p, info := range m {
				infos[p] = info
			}
		}
	} else if err != nil {
		for i := range errs {
			errs[i] = err
		}
	}
	return infos, errs
}

// queryNeeded asks Nix for the path info the pushes of roots need: the roots', and
// the whole closure of any reference not yet known to be in the cache. A
// path built on top of pushed ones (the hook's usual case) costs a query of
// itself alone, not of its whole closure.
func (u *Uploader) queryNeeded(ctx context.Context, roots []string, cutoff time.Time) (map[string]nix.PathInfo, error) {
	list, err := u.cfg.Nix.Query(ctx, roots)
	if err == nil {
		var unknown []string
		seen := make(map[string]bool)
		u.mu.Lock()
		for _, info := range list {
			seen[info.Path] = true
		}
		for _, info := range list {
			for _, ref := range info.References {
				if !seen[ref] && !u.fresh(ref, cutoff) {
					seen[ref] = true
					unknown = append(unknown, ref)
				}
			}
		}
		u.mu.Unlock()
		if len(unknown) > 0 {
			var more []nix.PathInfo
			more, err = u.cfg.Nix.QueryClosure(ctx, unknown)
			list = append(list, more...)
		}
	}
	if err != nil {
		if nix.IsInvalid(err) {
			return nil, store.Permanent(err)
		}
		return nil, err
	}
	m := make(map[string]nix.PathInfo, len(list))
	for _, info := range list {
		m[info.Path] = info
	}
	return m, nil
}

// closureError is the first failure among the paths of root's closure, or
// the context's error.
func closureError(root string, infos map[string]nix.PathInfo, failed map[string]error) error {
	if len(failed) == 0 {
		return nil
	}
	if err, ok := failed[root]; ok {
		return err
	}
	seen := map[string]bool{root: true}
	stack := []string{root}
	for len(stack) > 0 {
		p := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		for _, r := range infos[p].References {
			if seen[r] {
				continue
			}
			seen[r] = true
			if err, ok := failed[r]; ok {
				return &DependencyError{Path: root, Err: err}
			}
			stack = append(stack, r)
		}
	}
	return nil
}

// topoOrder lists the missing paths with every path after its references.
func topoOrder(missing map[string]bool, infos map[string]nix.PathInfo) []string {
	var out []string
	seen := make(map[string]bool, len(missing))
	var visit func(p string)
	visit = func(p string) {
		if seen[p] || !missing[p] {
			return
		}
		seen[p] = true
		for _, r := range infos[p].References {
			visit(r)
		}
		out = append(out, p)
	}
	keys := make([]string, 0, len(missing))
	for p := range missing {
		keys = append(keys, p)
	}
	slices.Sort(keys)
	for _, p := range keys {
		visit(p)
	}
	return out
}
