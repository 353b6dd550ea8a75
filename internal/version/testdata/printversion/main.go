// Command printversion prints version.Get() for TestLdflags.
package main

import (
	"os"

	"github.com/nixpush/nixpush/internal/version"
)

func main() { os.Stdout.WriteString(version.Get().String()) }
