// Command nixpush pushes what Nix builds to a signed binary cache in S3 or a
// directory. `nixpush daemon` runs the uploader; push, status, wait and
// retry talk to it over its Unix socket; gc, pin, unpin, pins and verify
// work on the bucket directly, with no daemon; init, check and keygen
// prepare and check a cache and its keys.
//
// It owns flags, wiring and exit codes, and nothing a test needs to reach:
// main is os.Exit(run(ctx, args, stdout, stderr)). Bad input is one line on
// stderr naming the command and the fix, and exit code 2.
package main
