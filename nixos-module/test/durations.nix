# Cases for ../durations.nix, checked against what nixpush's Go code
# (time.ParseDuration, and parseAge in cmd/nixpush/gc.go) makes of the same
# strings; null where nixpush refuses one. Needs no nixpkgs:
#   nix-instantiate --eval --strict nixos-module/test/durations.nix
let
  d = import ../durations.nix;
  ns = 1;
  us = 1000 * ns;
  ms = 1000 * us;
  s = 1000 * ms;
  m = 60 * s;
  h = 60 * m;
  day = 24 * h;
  # str: the string; go and age: what each reads, null for refused.
  cases = [
    { str = "1h"; go = h; age = h; }
    { str = "90m"; go = 90 * m; age = 90 * m; }
    { str = "1h30m"; go = 90 * m; age = 90 * m; }
    { str = "10s"; go = 10 * s; age = 10 * s; }
    { str = "0s"; go = 0; age = 0; }
    { str = "0"; go = 0; age = 0; }
    { str = "+0"; go = 0; age = 0; }
    { str = "-0s"; go = 0; age = 0; }
    { str = "+10m"; go = 10 * m; age = 10 * m; }
    { str = "1.5h"; go = 90 * m; age = 90 * m; }
    { str = ".5h"; go = 30 * m; age = 30 * m; }
    { str = "1.h"; go = h; age = h; }
    { str = "1ms"; go = ms; age = ms; }
    { str = "1m1s"; go = m + s; age = m + s; }
    { str = "300ns"; go = 300; age = 300; }
    { str = "2us"; go = 2 * us; age = 2 * us; }
    { str = "2µs"; go = 2 * us; age = 2 * us; } # U+00B5
    { str = "2μs"; go = 2 * us; age = 2 * us; } # U+03BC
    { str = "0.000000001s"; go = 1; age = 1; }
    { str = "0.0000000009s"; go = 0; age = 0; }
    { str = ".27691239733635m"; go = 16614743840; age = 16614743840; } # Go's float rounding
    { str = "2562047h"; go = 2562047 * h; age = 2562047 * h; }
    { str = "9223372036854775807ns"; go = 9223372036854775807; age = 9223372036854775807; }
    # Days: gc's ages only.
    { str = "30d"; go = null; age = 30 * day; }
    { str = "1d12h"; go = null; age = 36 * h; }
    { str = "36h"; go = 36 * h; age = 36 * h; }
    { str = "0d"; go = null; age = 0; }
    { str = "007d"; go = null; age = 7 * day; }
    { str = "1d+1h"; go = null; age = 25 * h; }
    { str = "106751d"; go = null; age = 106751 * day; }
    # Refused by nixpush (or, for ages past 106751 days, wrapped by it).
    { str = ""; go = null; age = null; }
    { str = "+"; go = null; age = null; }
    { str = "."; go = null; age = null; }
    { str = ".h"; go = null; age = null; }
    { str = "1"; go = null; age = null; }
    { str = "h"; go = null; age = null; }
    { str = "d"; go = null; age = null; }
    { str = "1h5"; go = null; age = null; }
    { str = "1mh"; go = null; age = null; }
    { str = "1 h"; go = null; age = null; }
    { str = " 1h"; go = null; age = null; }
    { str = "1H"; go = null; age = null; }
    { str = "1w"; go = null; age = null; }
    { str = "-1h"; go = null; age = null; }
    { str = "1d-1h"; go = null; age = null; }
    { str = "1d1d"; go = null; age = null; }
    { str = "1h1d"; go = null; age = null; }
    { str = "2562048h"; go = null; age = null; }
    { str = "9223372036854775808ns"; go = null; age = null; }
    { str = "106752d"; go = null; age = null; }
  ];
  failures = builtins.concatMap (c:
    let got = { go = d.go c.str; age = d.age c.str; };
    in if got.go == c.go && got.age == c.age then [ ]
    else [ "${builtins.toJSON c.str}: got go=${builtins.toJSON got.go} age=${builtins.toJSON got.age}, want go=${builtins.toJSON c.go} age=${builtins.toJSON c.age}" ]) cases;
in
if failures == [ ] then "${toString (builtins.length cases)} durations read as nixpush reads them"
else throw (builtins.concatStringsSep "\n" failures)
