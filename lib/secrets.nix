# Compiles `cell.secrets` declarations into the secrets document: which
# secret, of which kind, from where on the host, for which hosts and which
# parts of a request, behind which placeholder.
# It never holds a value: the host CLI reads each source at session start and
# pushes the value to the firewall daemon's memory (docs/secrets.md).
# Pure: builtins only, tested by lib/tests/secrets.nix.
let
  inherit (builtins)
    all
    attrNames
    concatMap
    concatStringsSep
    elem
    filter
    length
    listToAttrs
    match
    storeDir
    stringLength
    substring
    throw
    ;

  sourceKinds = [
    "keychain"
    "command"
    "env"
    "file"
  ];

  kinds = [
    "token"
    "aws"
  ];

  locationNames = [
    "header"
    "query"
    "body"
  ];

  /**
    The placeholder the agent VM sees instead of secret `name`. Not secret:
    it only tells the proxy which value to put in its place. For an aws
    secret it stands for the secret access key.
  */
  placeholder = name: "cell-placeholder-${name}";

  /**
    The access key id placeholder of aws secret `name`. A `.` never occurs
    in a secret's name, so it never collides with another placeholder.
  */
  accessKeyIdPlaceholder = name: "${placeholder name}.akid";

  hasPrefix = prefix: s: substring 0 (stringLength prefix) s == prefix;

  isStorePath = path: hasPrefix "${storeDir}/" "${path}/" || path == storeDir;

  kindOf = s: s.kind or "token";

  checkSource =
    name: source:
    let
      set = filter (k: (source.${k} or null) != null) sourceKinds;
      where = "cell.secrets.${name}.source";
    in
    if length set != 1 then
      throw "${where}: set exactly one of keychain, command, env, file (found ${
        if set == [ ] then "none" else toString set
      }); e.g. source.env = \"ANTHROPIC_API_KEY\""
    else if source ? file && source.file != null && isStorePath (toString source.file) then
      throw "${where}.file: ${toString source.file} is in the Nix store, which every user can read; keep the secret outside the store and give its path as a string, e.g. \"/run/user/1000/anthropic-key\""
    else if source ? file && source.file != null && match "/.*" (toString source.file) == null then
      throw "${where}.file: give an absolute path (\"/home/me/.config/anthropic-key\"), not ${toString source.file}"
    else if source ? command && source.command != null && source.command == [ ] then
      throw "${where}.command: give the program and its arguments, e.g. [ \"pass\" \"show\" \"anthropic\" ]"
    else
      listToAttrs (
        map
          (k: {
            name = k;
            value = source.${k};
          })
          set
      );

  checkName =
    name:
    if match "[a-z0-9][a-z0-9_-]*" name == null then
      throw "cell.secrets.\"${name}\": a secret's name is lower-case letters, digits, - and _ (it becomes part of the placeholder), e.g. \"anthropic\""
    else
      name;

  checkHosts =
    name: hosts:
    if hosts == [ ] then
      throw "cell.secrets.${name}.hosts: name the hosts this secret may be sent to, e.g. [ \"api.anthropic.com\" ]; a secret with no scope would be sent nowhere"
    else
      hosts;

  checkKind =
    name: s:
    let
      kind = kindOf s;
    in
    if !(elem kind kinds) then
      throw "cell.secrets.${name}.kind: \"${toString kind}\" is not a kind; use \"token\" (the placeholder is swapped for the value) or \"aws\" (requests are re-signed)"
    else if kind == "aws" && s.env or null != null then
      throw "cell.secrets.${name}.env: an aws secret's variables are fixed (the agent gets AWS_ACCESS_KEY_ID=${accessKeyIdPlaceholder name} and AWS_SECRET_ACCESS_KEY=${placeholder name}); remove env = \"${s.env}\""
    else
      kind;

  checkLocations =
    name: s:
    let
      locations = s.locations or [ "header" ];
      where = "cell.secrets.${name}.locations";
    in
    if locations == [ ] then
      throw "${where}: name at least one of \"header\", \"query\", \"body\", e.g. [ \"header\" ] (the default)"
    else if !(all (l: elem l locationNames) locations) then
      throw "${where}: ${
        concatStringsSep ", " (map (l: "\"${toString l}\"") (filter (l: !(elem l locationNames)) locations))
      } is not a part of a request; use \"header\", \"query\" or \"body\""
    else if kindOf s == "aws" && locations != [ "header" ] then
      throw "${where}: an aws secret is never swapped into a request (the proxy checks the agent's SigV4 signature and signs the request again), so locations does not apply; remove it"
    else
      locations;

  /**
    The agent's environment for one secret, as name/value pairs: a token
    secret its `env` (if set), an aws secret the two variables the AWS SDKs
    and CLI sign with.
  */
  envPairs =
    name: s:
    if kindOf s == "aws" then
      [
        {
          name = "AWS_ACCESS_KEY_ID";
          value = accessKeyIdPlaceholder name;
        }
        {
          name = "AWS_SECRET_ACCESS_KEY";
          value = placeholder name;
        }
      ]
    else if s.env or null != null then
      [
        {
          name = s.env;
          value = placeholder name;
        }
      ]
    else
      [ ];

  /**
    checkSet :: attrsOf secret -> attrsOf secret

    Refuses what no single secret shows: two aws secrets (both would need
    the same AWS_* variables), and an environment variable set by two
    secrets (the agent could hold only one of the placeholders).
  */
  checkSet =
    secrets:
    let
      names = attrNames secrets;
      aws = filter (name: kindOf secrets.${name} == "aws") names;
      owners = concatMap (name: map (p: { inherit name; var = p.name; }) (envPairs name secrets.${name})) names;
      clashes = filter (o: length (filter (p: p.var == o.var) owners) > 1) owners;
      clash = builtins.head clashes;
      clashing = map (o: o.name) (filter (o: o.var == clash.var) owners);
    in
    if length aws > 1 then
      throw "cell.secrets: ${concatStringsSep " and " aws} are each kind = \"aws\", but the agent has one AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; keep one aws secret per cell (pick the account with its source, e.g. source.command = [ \"aws\" \"configure\" \"export-credentials\" \"--profile\" \"NAME\" \"--format\" \"process\" ])"
    else if clashes != [ ] then
      throw "cell.secrets: ${concatStringsSep " and " clashing} each set the agent's ${clash.var}, which holds one placeholder; give each secret its own env (or env = null)${if clash.var == "AWS_ACCESS_KEY_ID" || clash.var == "AWS_SECRET_ACCESS_KEY" then ", an aws secret sets AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY itself" else ""}"
    else
      secrets;

  /**
    toDocument :: attrsOf secret -> { version; secrets }

    Every secret with its placeholder, the environment variable the agent
    sees it in, its scope, its kind and locations, for an aws secret the
    access key id placeholder, and its source (exactly one kind).
  */
  toDocument =
    secrets:
    let
      checked = checkSet secrets;
    in
    {
      version = 1;
      secrets = map
        (
          name:
          let
            s = checked.${name};
            kind = checkKind name s;
          in
          {
            name = checkName name;
            env = if s.env or null != null then s.env else null;
            placeholder = placeholder name;
            hosts = checkHosts name (s.hosts or [ ]);
            inherit kind;
            locations = checkLocations name s;
            source = checkSource name (s.source or { });
          }
          // (if kind == "aws" then { accessKeyIdPlaceholder = accessKeyIdPlaceholder name; } else { })
        )
        (attrNames checked);
    };

  /**
    The environment the agent VM gets: variable = placeholder, for every
    token secret that names a variable, and AWS_ACCESS_KEY_ID and
    AWS_SECRET_ACCESS_KEY for the aws secret.
  */
  agentEnvironment =
    secrets:
    let
      checked = checkSet secrets;
    in
    listToAttrs (concatMap (name: envPairs name checked.${name}) (attrNames checked));
in
{
  inherit
    toDocument
    agentEnvironment
    placeholder
    accessKeyIdPlaceholder
    isStorePath
    ;
}
