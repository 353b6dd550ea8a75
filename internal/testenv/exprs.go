package testenv

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
)

// The expressions below use only /bin/sh and coreutils from the host
// (sandbox = false), so they build without nixpkgs. Every derivation mixes
// in seed, so each test builds fresh paths in the shared /nix/store.

const mkDrv = `mk = name: script: derivation {
    inherit name; system = builtins.currentSystem; builder = "/bin/sh";
    args = [ "-c" ("PATH=/bin:/usr/bin; set -e; " + script) ];
  };`

// Chain is n derivations each referring to the one before (a real runtime
// reference: its path is written into the output); it evaluates to the tip.
func Chain(seed string, n int) string {
	return fmt.Sprintf(`let s = %q; %s
  chain = i: if i == 0 then null else
    let prev = chain (i - 1); in
    mk "chain-${toString i}" "echo ${s} ${toString i} ${if prev == null then "" else prev} > $out";
in chain %d`, seed, mkDrv, n)
}

// DAG is n derivations in layers, each referring to up to three earlier ones,
// each holding about sizeKiB of data, half of it random when randomHalf; it
// evaluates to a derivation referring to all of them.
func DAG(seed string, n, sizeKiB int, randomHalf bool) string {
	rnd := "0"
	if randomHalf {
		rnd = "1"
	}
	return fmt.Sprintf(`let s = %q; %s
  size = %d; rnd = %s;
  node = i: let deps = builtins.filter (d: d != null) [
      (if i >= 1 then nodes.${toString (i - 1)} else null)
      (if i >= 7 then nodes.${toString (i / 2)} else null)
      (if i >= 13 then nodes.${toString (i / 3)} else null) ];
    in mk "dag-${toString i}" ''
      mkdir $out; echo ${s} ${toString i} ${toString deps} > $out/refs
      if [ ${toString rnd} = 1 ]; then
        head -c $(( ${toString size} * 512 )) /dev/urandom > $out/random
        yes "nixpush ${s} ${toString i}" | head -c $(( ${toString size} * 512 )) > $out/text
      else
        yes "nixpush ${s} ${toString i}" | head -c $(( ${toString size} * 1024 )) > $out/text
      fi
    '';
  nodes = builtins.listToAttrs (builtins.genList (i: { name = toString i; value = node i; }) %d);
in mk "dag-top" "echo ${toString (builtins.attrValues nodes)} > $out"`, seed, mkDrv, sizeKiB, rnd, n)
}

// Awkward is a closure of paths that are hard to serialise: several outputs
// of one derivation, self-references, an empty file, an empty directory,
// executables, dangling symlinks and symlinks to directories, file names
// with spaces and non-ASCII characters, deep nesting, a fixed-output (CA)
// path, and a store path that is a single file. It evaluates to a top
// derivation referring to all of them.
func Awkward(seed string) string {
	fixed := "nixpush fixed-output " + seed + "\n"
	sum := sha256.Sum256([]byte(fixed))
	deep := strings.Repeat("d/", 40)
	return fmt.Sprintf(`let s = %q; %s
  multi = derivation {
    name = "awkward-multi"; system = builtins.currentSystem; builder = "/bin/sh";
    outputs = [ "out" "dev" "doc" ];
    args = [ "-c" "PATH=/bin:/usr/bin; mkdir $out $dev; echo ${s} $dev > $out/uses-dev; echo ${s} > $dev/header.h; echo ${s} $out > $doc" ];
  };
  tree = mk "awkward-tree" ''
    mkdir -p $out/empty-dir "$out/spaces in name" $out/%s/bottom
    : > $out/empty-file
    printf '#!/bin/sh\necho hi\n' > $out/run.sh; chmod +x $out/run.sh
    echo x > "$out/spaces in name/a file"
    echo ü > "$out/é ü 日本 ✓"
    ln -s /nonexistent/dangling $out/dangling
    ln -s empty-dir $out/link-to-dir
    ln -s "spaces in name/a file" $out/link-to-file
    echo $out > $out/self
    echo ${s} > $out/%sbottom/leaf
    head -c 70000 /dev/urandom > $out/random.bin
    printf 'no newline at end' > $out/no-newline
  '';
  single = mk "awkward-single-file" "echo ${s} ${tree} > $out";
  fixed = derivation {
    name = "awkward-fixed"; system = builtins.currentSystem; builder = "/bin/sh";
    args = [ "-c" "printf 'nixpush fixed-output %s\n' > $out" ];
    outputHashMode = "flat"; outputHashAlgo = "sha256"; outputHash = %q;
  };
in mk "awkward-top" "mkdir $out; echo ${multi} ${multi.dev} ${multi.doc} ${tree} ${single} ${fixed} > $out/all"`,
		seed, mkDrv, deep, deep, seed, hex.EncodeToString(sum[:]))
}

// Family is an attribute set of closures, one per name, that share
// dependencies: each top refers to a leaf of its own and to a chain of
// three shared paths; the tops named in pair also share a "pair" path
// (which refers to the chain). Each evaluates to a path named after it.
func Family(seed string, names []string, pair []string) string {
	var attrs strings.Builder
	for _, n := range names {
		extra := ""
		for _, p := range pair {
			if p == n {
				extra = "${pair}"
			}
		}
		fmt.Fprintf(&attrs, "  %s = top %q %q;\n", n, n, extra)
	}
	return fmt.Sprintf(`let s = %q; %s
  shared1 = mk "shared-1" "echo ${s} 1 > $out";
  shared2 = mk "shared-2" "echo ${s} 2 ${shared1} > $out";
  shared3 = mk "shared-3" "echo ${s} 3 ${shared2} > $out";
  pair = mk "pair" "echo ${s} pair ${shared3} > $out";
  leaf = n: mk "${n}-leaf" "echo ${s} ${n} > $out";
  top = n: extra: mk n "echo ${s} ${n} ${leaf n} ${shared3} ${extra} > $out";
in {
%s}`, seed, mkDrv, attrs.String())
}
