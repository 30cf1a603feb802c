# The default cell's allowlist: a model provider, a git host (HTTPS and SSH)
# and a package registry. Project cells start from templates/default instead.
{
  cell.policy = {
    https."api.anthropic.com".comment = "model provider";
    https."api.openai.com".comment = "model provider";
    https."github.com".comment = "git over HTTPS";
    https."*.githubusercontent.com".comment = "raw files, release assets";
    https."api.github.com".comment = "GitHub API";
    tcp."github.com" = {
      ports = [ 22 ];
      comment = "git over SSH";
    };
    https."proxy.golang.org" = {
      methods = [
        "GET"
        "HEAD"
      ];
      comment = "Go module proxy (read-only)";
    };
  };

  cell.secrets.anthropic = {
    env = "ANTHROPIC_API_KEY";
    hosts = [ "api.anthropic.com" ];
    source.env = "ANTHROPIC_API_KEY";
  };
}
