# The assertion helpers every lib/tests file uses. Builtins only.
{
  # Must evaluate to `expected`.
  eq = name: expr: expected: {
    inherit name;
    ok = expr == expected;
    got = expr;
  };

  # Must refuse (throw) when forced.
  refuses = name: expr: {
    inherit name;
    ok = !(builtins.tryEval (builtins.deepSeq expr expr)).success;
    got = "evaluated without an error";
  };

  # { cases = N; failures = [ { name; got; } ]; } — failures must be empty.
  run = cases: {
    cases = builtins.length cases;
    failures = map
      (c: {
        inherit (c) name got;
      })
      (builtins.filter (c: !c.ok) cases);
  };
}
