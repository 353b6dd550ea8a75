// Command synthgen writes a synthetic binary cache (see
// internal/synthcache) into a file:// store's directory:
//
//	go run ./bench/synthgen -paths 100000 -seed 1 DIR
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/nixpush/nixpush/internal/synthcache"
)

func main() {
	paths := flag.Int("paths", 100000, "number of paths")
	seed := flag.Uint64("seed", 1, "seed: the same seed, the same cache")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: synthgen [-paths N] [-seed S] DIR")
		os.Exit(2)
	}
	start := time.Now()
	c, err := synthcache.WriteDir(context.Background(), flag.Arg(0), synthcache.Defaults(*paths, *seed))
	if err != nil {
		fmt.Fprintln(os.Stderr, "synthgen:", err)
		os.Exit(1)
	}
	fmt.Printf("%d paths, %d projects, %d objects in %s; public key %s\n", c.Paths, c.Projects, c.Objects, time.Since(start).Round(time.Millisecond), c.PublicKey)
}
