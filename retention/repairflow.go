package retention

import (
	"context"
	"fmt"
	"io"

	"github.com/nixpush/nixpush/layout"
	"github.com/nixpush/nixpush/store"
)

// Pusher pushes store paths to the cache again: for the CLI, the daemon
// behind its socket. Retention itself never opens a socket.
type Pusher interface {
	// Ready fails when the pusher cannot take paths now.
	Ready(ctx context.Context) error
	// Push pushes paths again, even those it believes cached, and waits
	// until they are pushed or have failed.
	Push(ctx context.Context, paths []string) error
	// String names the pusher in what the repair says it does.
	String() string
}

// LocalStore says which paths the local Nix store holds (nix.Client).
type LocalStore interface {
	CheckValidity(ctx context.Context, paths []string) (valid, invalid []string, err error)
}

// RepairAgainOptions say how RepairAgain repairs, pushes and verifies.
type RepairAgainOptions struct {
	Repair RepairOptions
	// Verify: the options of the verify that found the problems; the
	// verify after the repair checks the same keys, NARs and filter.
	Verify VerifyOptions
	Pusher Pusher
	Local  LocalStore
	// Log receives a line for each step of the repair; nil: none.
	Log io.Writer
	// Warn receives the repair's warnings; nil: none.
	Warn func(string)
}

// RepairAgain repairs what rep found broken and then verifies again:
// it checks the pusher is there before deleting anything, deletes the
// broken .narinfos with their referrers (Repair), has the pusher push
// again those the local Nix store holds, checks they are back, and
// verifies the bucket. It returns the paths it could not push again and
// the verify after the repair; rep.Repair records what was deleted.
func RepairAgain(ctx context.Context, b store.Bucket, rep *VerifyReport, opts RepairAgainOptions) ([]string, *VerifyReport, error) {
	say := func(format string, a ...any) {
		if opts.Log != nil {
			fmt.Fprintf(opts.Log, format, a...)
		}
	}
	// The pusher must be there to push again what goes: ask before
	// deleting anything.
	if err := opts.Pusher.Ready(ctx); err != nil && rep.Broken > 0 {
		return nil, nil, fmt.Errorf("nothing deleted: the daemon that would push the broken paths again does not answer: %w", err)
	}
	repaired, err := Repair(ctx, b, rep, opts.Repair)
	if err != nil {
		return nil, nil, err
	}
	for _, w := range repaired.Warnings {
		if opts.Warn != nil {
			opts.Warn(w)
		}
	}
	rep.Repair = repaired
	say("repair: deleted %d .narinfos (the broken paths and those referring to them) and %d bad NARs\n", len(repaired.Deleted), repaired.NARs)
	if repaired.Realisations > 0 {
		say("repair: deleted %d realisations pointing at missing paths; not pushed again (the daemon uploads a realisation only when the post-build hook hands it the derivation, after a build)\n", repaired.Realisations)
	}
	valid, invalid, err := opts.Local.CheckValidity(ctx, repaired.Deleted)
	if err != nil {
		return nil, nil, err
	}
	for _, p := range invalid {
		say("cannot repair %s: not in the local Nix store; push it from a machine that has it\n", p)
	}
	if len(valid) > 0 {
		say("repair: pushing %d paths again through %s\n", len(valid), opts.Pusher)
		missing, err := pushAgain(ctx, b, opts.Pusher, valid)
		for _, p := range missing {
			say("cannot repair %s: the daemon did not push it again; restart it and run nixpush push %s\n", p, p)
		}
		invalid = append(invalid, missing...)
		if err != nil {
			return invalid, nil, err
		}
	}
	v := opts.Verify
	after, err := Verify(ctx, b, VerifyOptions{Keys: v.Keys, Full: v.Full, Filtered: v.Filtered, Walk: WalkOptions{Cache: v.Walk.Cache}})
	if err != nil {
		return invalid, nil, err
	}
	return invalid, after, nil
}

// pushAgain has p push paths again and returns those whose .narinfo is
// still missing once it says it is done (those found so far, on an error
// checking).
func pushAgain(ctx context.Context, b store.Bucket, p Pusher, paths []string) ([]string, error) {
	if err := p.Push(ctx, paths); err != nil {
		return nil, err
	}
	var missing []string
	for _, path := range paths {
		has, err := b.Has(ctx, layout.NarInfoKey(path))
		if err != nil {
			return missing, err
		}
		if !has {
			missing = append(missing, path)
		}
	}
	return missing, nil
}
