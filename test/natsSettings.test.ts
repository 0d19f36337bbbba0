import { describe, expect, it } from "vitest";
import { loadSettings, SettingsError } from "../src/platform/settings.ts";
import { natsConnectOptions } from "../src/wire/nats.ts";

describe("NATS credential settings", () => {
  it("take user and password from the URL, percent-decoded, and keep them out of the server list", () => {
    const s = loadSettings({ TALLY_NATS_URL: "nats://tally_api:p%40ss:word@nats1:4222,nats://nats2:4222" });
    expect(s.natsAccess).toEqual({ user: "tally_api", password: "p@ss:word" });
    expect(natsConnectOptions(s.natsUrl, s.natsAccess)).toEqual({ user: "tally_api", pass: "p@ss:word" });
  });

  it("read a URL with a user alone as a token, as other NATS clients do", () => {
    expect(loadSettings({ TALLY_NATS_URL: "nats://s3cret@nats:4222" }).natsAccess).toEqual({ token: "s3cret" });
  });

  it("let the settings win over the URL", () => {
    const s = loadSettings({ TALLY_NATS_URL: "nats://a:b@nats:4222", TALLY_NATS_USER: "c", TALLY_NATS_PASSWORD: "d" });
    expect(s.natsAccess).toEqual({ user: "c", password: "d" });
  });

  it("refuse two ways to authenticate, a password without a user, half a client certificate, naming the settings", () => {
    expect(() => loadSettings({ TALLY_NATS_TOKEN: "t", TALLY_NATS_CREDS_FILE: "/x.creds" })).toThrow(
      /TALLY_NATS_TOKEN, TALLY_NATS_CREDS_FILE: set one way/,
    );
    expect(() => loadSettings({ TALLY_NATS_PASSWORD: "p" })).toThrow(SettingsError);
    expect(() => loadSettings({ TALLY_NATS_CERT_FILE: "/c.pem" })).toThrow(/TALLY_NATS_CERT_FILE, TALLY_NATS_KEY_FILE/);
  });

  it("fail at start, naming the setting, when a credentials or CA file cannot be read", () => {
    expect(() => natsConnectOptions("nats://h:4222", { credsFile: "/nonexistent/tally.creds" })).toThrow(
      /TALLY_NATS_CREDS_FILE: cannot read \/nonexistent\/tally.creds/,
    );
    expect(() => natsConnectOptions("nats://h:4222", { caFile: "/nonexistent/ca.crt" })).toThrow(/TALLY_NATS_CA_FILE/);
  });

  it("take a cluster's servers as a comma-separated list, each checked; TALLY_NATS_REPLICAS from 1 to 5, default 1", () => {
    const s = loadSettings({ TALLY_NATS_URL: "nats://n1:4222, nats://n2:4222,tls://n3:4222", TALLY_NATS_REPLICAS: "3" });
    expect(s.natsUrl).toBe("nats://n1:4222, nats://n2:4222,tls://n3:4222");
    expect(s.natsReplicas).toBe(3);
    expect(loadSettings({}).natsReplicas).toBe(1);
    expect(() => loadSettings({ TALLY_NATS_URL: "nats://n1:4222,n2:4222" })).toThrow(/TALLY_NATS_URL: expected a URL starting with nats:\/\//);
    expect(() => loadSettings({ TALLY_NATS_REPLICAS: "0" })).toThrow(/TALLY_NATS_REPLICAS: expected an integer from 1 to 5/);
    expect(() => loadSettings({ TALLY_NATS_REPLICAS: "6" })).toThrow(/TALLY_NATS_REPLICAS/);
  });

  it("require TLS for tls:// URLs even without a CA file", () => {
    expect(natsConnectOptions("tls://nats:4222", {})).toEqual({ tls: {} });
    expect(natsConnectOptions("nats://nats:4222", {})).toEqual({});
  });
});
