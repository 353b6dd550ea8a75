# Durations as nixpush reads them, for the module's assertions: each
# function returns nanoseconds (what a Go time.Duration counts), or null for
# a string nixpush would refuse. Builtins only, so the tests need no nixpkgs.
#
#  - go: Go's time.ParseDuration, as the daemon's --trust-cache-for and
#    --max-sweep-wait and gc's --sweep-window read it: "90m", "1h30m",
#    "1.5h", "10s", "0" (no "d"). A negative one counts as unreadable:
#    nixpush refuses those flags below zero.
#  - age: gc's --older-than and --grace (parseAge in cmd/nixpush/gc.go):
#    whole days in front, then a Go duration: "30d", "1d12h", "36h", "0s".
#
# Both follow Go step by step, fractions included (Go computes them in
# floating point, and so does this), so a comparison here agrees with the
# one nixpush makes. Where Go's arithmetic would wrap (parseAge with more
# than 106751 days) this says null instead.
let
  inherit (builtins) match elemAt stringLength substring floor;

  maxInt = 9223372036854775807;

  units = {
    ns = 1;
    us = 1000;
    "µs" = 1000; # U+00B5
    "μs" = 1000; # U+03BC
    ms = 1000000;
    s = 1000000000;
    m = 60000000000;
    h = 3600000000000;
  };

  # Sum and product that give null instead of wrapping past 2^63 - 1.
  plus = a: b: if a == null || b == null || a > maxInt - b then null else a + b;
  times = a: b: if a == null || b == null || (b != 0 && a > maxInt / b) then null else a * b;

  digit = c: (builtins.fromJSON c);
  chars = s: builtins.genList (i: substring i 1 s) (stringLength s);

  # Go's leadingInt: a run of digits as a number, null past 2^63 - 1.
  integer = d: builtins.foldl' (x: c: plus (times x 10) (digit c)) 0 (chars d);

  # Go's leadingFraction: the digits after the dot as x / scale, where x
  # stops growing (later digits are ignored) once it would overflow.
  fraction = d: builtins.foldl' (acc:
    c:
    if acc.full || acc.x > (maxInt - 9) / 10 then acc // { full = true; }
    else { x = acc.x * 10 + digit c; scale = acc.scale * 10.0; full = false; })
    { x = 0; scale = 1.0; full = false; } (chars d);

  # One number with its unit, then the rest: the unit ends where a digit or
  # a dot begins (as in Go), which also tells "1ms" from "1m" + "s".
  component = match "([0-9]*)(\\.([0-9]*))?(ns|us|µs|μs|ms|s|m|h)(([0-9.].*)?)";

  goUnsigned = acc: rest:
    let
      p = component rest;
      int = elemAt p 0;
      frac = if elemAt p 2 == null then "" else elemAt p 2;
      unit = units.${elemAt p 3};
      f = fraction frac;
      # int64(float64(f) * (float64(unit) / scale)), as Go has it.
      fracNs = if f.x == 0 then 0 else floor (f.x * 1.0 * (unit * 1.0 / f.scale));
      value = plus (times (integer int) unit) fracNs;
    in
    if acc == null then null
    else if rest == "" then acc
    else if p == null || (int == "" && frac == "") then null
    else goUnsigned (plus acc value) (elemAt p 4);

  go = s:
    let
      m = match "([-+]?)(.*)" s;
      sign = elemAt m 0;
      body = elemAt m 1;
      v = if body == "0" then 0 else if body == "" then null else goUnsigned 0 body;
    in
    if v == null || (sign == "-" && v != 0) then null else v;

  age = s:
    let m = match "([0-9]+)d(.*)" s;
    in if m == null then go s
    else
      let days = times (integer (elemAt m 0)) 86400000000000;
      in if elemAt m 1 == "" then days else plus days (go (elemAt m 1));
in
{
  inherit go age;
}
