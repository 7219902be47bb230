// The login the console's pages share (the review console and the analytics page): the access token in memory
// only, the refresh token in this tab's sessionStorage (one key for both pages, so a person moving between them
// stays logged in; closing the tab ends the login). Loaded before the page's own script, which calls
// `Session.start({ showApp, reset })`. Every text is shown with textContent, never parsed as HTML.
"use strict";

const Session = (() => {
  const REFRESH_KEY = "switchboard-console:refresh";
  const ENDED = "Your session ended: log in again.";
  const byId = (id) => document.getElementById(id);
  let access = null;
  let refreshTimer = null;
  let refreshing = null;
  let page = { showApp: async () => {}, reset: () => {} };

  class ApiError extends Error {
    constructor(status, detail) {
      super(detail);
      this.status = status;
    }
  }

  async function detailOf(response) {
    try {
      const body = await response.json();
      if (typeof body.detail === "string") return body.detail;
      if (Array.isArray(body.detail)) return body.detail.map((d) => `${(d.loc || []).slice(-1)[0]}: ${d.msg}`).join("; ");
      return JSON.stringify(body);
    } catch {
      return `${response.status} ${response.statusText}`;
    }
  }

  function keep(tokens) {
    access = tokens.access_token;
    sessionStorage.setItem(REFRESH_KEY, tokens.refresh_token);
    clearTimeout(refreshTimer);
    // Refresh a minute before the access token expires (or halfway, for short lifetimes).
    const lead = Math.max(tokens.expires_in - 60, tokens.expires_in / 2);
    refreshTimer = setTimeout(() => refresh().catch(() => showLogin(ENDED)), lead * 1000);
  }

  async function login(email, password, tenant) {
    const form = new URLSearchParams({ username: email, password });
    if (tenant) form.set("tenant", tenant);
    const response = await fetch("/auth/login", { method: "POST", body: form });
    if (!response.ok) throw new ApiError(response.status, await detailOf(response));
    keep(await response.json());
  }

  function refresh() {
    // One refresh at a time: a refresh token works once, and a second use would end the login.
    if (!refreshing) {
      refreshing = (async () => {
        const token = sessionStorage.getItem(REFRESH_KEY);
        if (!token) throw new ApiError(401, "not logged in");
        const response = await fetch("/auth/refresh", {
          method: "POST", headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ refresh_token: token }),
        });
        if (!response.ok) {
          sessionStorage.removeItem(REFRESH_KEY);
          throw new ApiError(response.status, await detailOf(response));
        }
        keep(await response.json());
      })().finally(() => { refreshing = null; });
    }
    return refreshing;
  }

  // The response to an authenticated call (refreshed once on a 401); an ApiError with the server's detail.
  async function request(path, { method = "GET", body } = {}, retried = false) {
    if (!access) await refresh();
    const headers = { Authorization: `Bearer ${access}` };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    if (response.status === 401 && !retried) {
      access = null;
      try {
        await refresh();
      } catch (err) {
        showLogin(ENDED);
        throw err;
      }
      return request(path, { method, body }, true);
    }
    if (!response.ok) throw new ApiError(response.status, await detailOf(response));
    return response;
  }

  async function api(path, options) {
    const response = await request(path, options);
    return response.status === 204 ? null : response.json();
  }

  async function logout() {
    const token = sessionStorage.getItem(REFRESH_KEY);
    try {
      await fetch("/auth/logout", {
        method: "POST",
        headers: { "Content-Type": "application/json", ...(access ? { Authorization: `Bearer ${access}` } : {}) },
        body: JSON.stringify({ refresh_token: token || "-" }),
      });
    } finally {
      showLogin("You are logged out.");
    }
  }

  function showLogin(message) {
    clearTimeout(refreshTimer);
    access = null;
    sessionStorage.removeItem(REFRESH_KEY);
    page.reset();
    byId("app-view").hidden = true;
    byId("login-view").hidden = false;
    const error = byId("login-error");
    error.hidden = !message;
    error.textContent = message || "";
    byId("login-password").value = "";
    byId("login-email").focus();
  }

  // Wires the login form and the logout button, then shows the page to a login kept in this tab, or the form.
  async function start(own) {
    page = own;
    byId("login-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const button = byId("login-submit");
      button.disabled = true;
      byId("login-error").hidden = true;
      try {
        await login(byId("login-email").value.trim(), byId("login-password").value, byId("login-tenant").value.trim());
        await page.showApp();
      } catch (err) {
        byId("login-error").hidden = false;
        byId("login-error").textContent = err.message;
      } finally {
        button.disabled = false;
      }
    });
    byId("logout").addEventListener("click", logout);
    if (sessionStorage.getItem(REFRESH_KEY)) {
      try {
        await refresh();
        await page.showApp();
        return;
      } catch { /* fall through to the login form */ }
    }
    showLogin("");
  }

  return { api, request, showLogin, start };
})();
