// Command synthgen writes a synthetic binary cache (see
// internal/synthcache) into a file:// store's directory, or into any store
// nixpush can push to (an S3 bucket, through PutObject, many at once):
//
//	go run ./bench/synthgen -paths 100000 -seed 1 DIR
//	go run ./bench/synthgen -paths 100000 -jobs 64 's3://BUCKET?endpoint=HOST:9000&scheme=http'
//
// A store dates its objects itself: an S3 cache's ages are all "now", so
// a gc of it needs a --grace shorter than the time since.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/nixpush/nixpush/store"

	"github.com/nixpush/nixpush/internal/synthcache"
)

func main() {
	paths := flag.Int("paths", 100000, "number of paths")
	seed := flag.Uint64("seed", 1, "seed: the same seed, the same cache")
	jobs := flag.Int("jobs", 0, "projects written at once (0: 16 for a directory, 64 for a store URI)")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: synthgen [-paths N] [-seed S] [-jobs J] DIR|STORE-URI")
		os.Exit(2)
	}
	ctx := context.Background()
	opts := synthcache.Defaults(*paths, *seed)
	opts.Jobs = *jobs
	start := time.Now()
	var c *synthcache.Cache
	var err error
	if dest := flag.Arg(0); strings.Contains(dest, "://") {
		var s store.Store
		if s, err = store.Open(ctx, dest, store.Options{}); err == nil {
			if opts.Jobs == 0 {
				opts.Jobs = 64 // a request's latency, not the CPU, bounds a store
			}
			c, err = synthcache.WriteBucket(ctx, s, opts)
		}
	} else {
		c, err = synthcache.WriteDir(ctx, dest, opts)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "synthgen:", err)
		os.Exit(1)
	}
	fmt.Printf("%d paths, %d projects, %d objects in %s; public key %s\n", c.Paths, c.Projects, c.Objects, time.Since(start).Round(time.Millisecond), c.PublicKey)
}
