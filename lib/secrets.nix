# Compiles `cell.secrets` declarations into the secrets document: which
# secret, from where on the host, for which hosts, behind which placeholder.
# It never holds a value: the host CLI reads each source at session start and
# pushes the value to the firewall daemon's memory (docs/secrets.md).
# Pure: builtins only, tested by lib/tests/secrets.nix.
let
  inherit (builtins)
    attrNames
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

  /**
    The placeholder the agent VM sees instead of secret `name`. Not secret:
    it only tells the proxy which value to put in its place.
  */
  placeholder = name: "cell-placeholder-${name}";

  hasPrefix = prefix: s: substring 0 (stringLength prefix) s == prefix;

  isStorePath = path: hasPrefix "${storeDir}/" "${path}/" || path == storeDir;

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

  /**
    toDocument :: attrsOf secret -> { version; secrets }

    Every secret with its placeholder, the environment variable the agent
    sees it in, its scope, and its source (exactly one kind).
  */
  toDocument = secrets: {
    version = 1;
    secrets = map
      (
        name:
        let
          s = secrets.${name};
        in
        {
          name = checkName name;
          env = if s.env or null != null then s.env else null;
          placeholder = placeholder name;
          hosts = checkHosts name (s.hosts or [ ]);
          source = checkSource name (s.source or { });
        }
      )
      (attrNames secrets);
  };

  /**
    The environment the agent VM gets: variable = placeholder, for every
    secret that names a variable.
  */
  agentEnvironment =
    secrets:
    listToAttrs (
      map
        (name: {
          name = secrets.${name}.env;
          value = placeholder name;
        })
        (filter (name: (secrets.${name}.env or null) != null) (attrNames secrets))
    );
in
{
  inherit
    toDocument
    agentEnvironment
    placeholder
    isStorePath
    ;
}
