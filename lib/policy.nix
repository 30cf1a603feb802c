# Compiles `cell.policy` option values into the policy document that
# cell-proxy reads (docs/policy.md). Pure: builtins only, so it is tested with
# plain `nix-instantiate --eval` and needs no nixpkgs.
#
# Keys of `https` and `tcp` are the host patterns (one entry per host, so
# several modules can add to the same host); `host` inside an entry
# overrides the key. Unset (null) values are left out, so cell-proxy's own
# defaults apply and the two never drift apart.
let
  inherit (builtins)
    attrNames
    filter
    isList
    length
    listToAttrs
    throw
    ;

  # Drops null values and empty optional lists that mean "unset".
  clean =
    attrs:
    listToAttrs (
      map
        (name: {
          inherit name;
          value = attrs.${name};
        })
        (filter (name: attrs.${name} != null) (attrNames attrs))
    );

  flag = value: if value == true then true else null;

  hostOf = key: entry: if entry.host or null != null then entry.host else key;

  # The checks the option types cannot express (they span fields); the
  # messages say what to write instead. cell-proxy --check repeats every check.
  checkHost =
    where: host: entry:
    if (host == "*") && !(entry.allowAnyHost or false) then
      throw "${where}: `*` alone would allow every host; name the host (\"api.example.com\"), a wildcard (\"*.example.com\"), or set allowAnyHost = true on this entry"
    else
      host;

  https =
    entries:
    map
      (
        key:
        let
          e = entries.${key};
          where = "cell.policy.https.\"${key}\"";
          host = checkHost where (hostOf key e) e;
        in
        if (e.passthrough or false) && ((e.methods or null) != null || (e.paths or null) != null) then
          throw "${where}: a passthrough host is not decrypted, so methods and paths cannot be checked; remove them or set passthrough = false"
        else if (e.passthrough or false) && (e.spy or null) == true then
          throw "${where}: a passthrough host is not decrypted, so nothing of it can be recorded; remove spy or set passthrough = false"
        else
          clean {
            inherit host;
            includeApex = flag (e.includeApex or false);
            allowAnyHost = flag (e.allowAnyHost or false);
            ports = e.ports or null;
            methods = e.methods or null;
            paths = e.paths or null;
            passthrough = flag (e.passthrough or false);
            privateUpstream = flag (e.privateUpstream or false);
            # null (left out): the daemon records known provider hosts.
            spy = e.spy or null;
            comment = e.comment or null;
          }
      )
      (attrNames entries);

  tcp =
    entries:
    map
      (
        key:
        let
          e = entries.${key};
          where = "cell.policy.tcp.\"${key}\"";
          ports = e.ports or [ ];
        in
        if !(isList ports) || length ports == 0 then
          throw "${where}: needs at least one port, e.g. ports = [ 22 ]"
        else
          clean {
            host = checkHost where (hostOf key e) e;
            includeApex = flag (e.includeApex or false);
            allowAnyHost = flag (e.allowAnyHost or false);
            inherit ports;
            privateUpstream = flag (e.privateUpstream or false);
            comment = e.comment or null;
          }
      )
      (attrNames entries);

  cidr = map (
    e:
    clean {
      inherit (e) cidr protocol ports;
      comment = e.comment or null;
    }
  );

  # An empty section is left out, like an unset one.
  section = value: if value == { } then null else value;
in
{
  /**
    The policy document for `cfg`, the value of `config.cell.policy`.

    # Example
    ```nix
    toDocument { https."api.example.com" = { }; }
    => { version = 1; https = [ { host = "api.example.com"; } ]; }
    ```
  */
  toDocument =
    cfg:
    clean {
      version = 1;
      https = https (cfg.https or { });
      tcp = tcp (cfg.tcp or { });
      cidr = cidr (cfg.cidr or [ ]);
      deny = cfg.deny or [ ];
      dns = section (clean (cfg.dns or { }));
      limits = section (clean (cfg.limits or { }));
    };
}
