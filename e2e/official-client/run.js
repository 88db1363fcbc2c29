// Drives the service with the official client @mindconnect/mindconnect-nodejs, through nothing
// but its documented constructor: one base URL (`gateway`), the client credentials (`basicAuth`)
// and the tenant. The client gets its token from <base>/oauth/token, checks it against
// <base>/token_keys and calls every UsageTransparencyClient method on the same base.
//
// Environment: UTS_BASE_URL, UTS_CLIENT_ID, UTS_CLIENT_SECRET, UTS_TENANT, UTS_IOT_TENANT (a
// tenant whose usages verify), UTS_CUSTOMER_TENANT (one whose usages fail verification).
// Prints one JSON object with what each call answered; exits non-zero on the first failure.
"use strict";
const { MindSphereSdk } = require("@mindconnect/mindconnect-nodejs");

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const base = env("UTS_BASE_URL");
const basicAuth = "Basic " + Buffer.from(`${env("UTS_CLIENT_ID")}:${env("UTS_CLIENT_SECRET")}`).toString("base64");
const sdk = new MindSphereSdk({ gateway: base, basicAuth, tenant: env("UTS_TENANT") });
const utc = sdk.GetUsageTransparencyClient();

const usage = (value) => ({ value, unit: "client-unit", datetime: new Date().toISOString() });
const user = (tenantId) => ({
  tenantId,
  userId: "client-user",
  userType: "user",
  resources: [{ application: "app", resource: "asset-1", usages: [usage(3), usage(4.5)] }],
});

async function follow(id, done) {
  const deadline = Date.now() + 90_000;
  for (;;) {
    const job = await utc.GetUsagesJobsById(id);
    if (done(job)) return job;
    if (Date.now() > deadline) throw new Error(`job ${id} never got there: ${JSON.stringify(job)}`);
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
}

async function main() {
  const out = {};
  const accepted = await utc.PostUsagesJobs({ users: [user(env("UTS_IOT_TENANT"))] });
  out.accepted = accepted;
  // Read at once: the client throws on a 404, so the service must already know the job.
  out.firstRead = await utc.GetUsagesJobsById(accepted.id);
  out.completed = await follow(accepted.id, (job) => job.status === "COMPLETED");
  out.completedErrors = await utc.GetUsagesJobsByIdErrors(accepted.id);

  const failing = await utc.PostUsagesJobs({ users: [user(env("UTS_CUSTOMER_TENANT"))] });
  out.failing = await follow(failing.id, (job) => job.status === "ERRORS");
  out.errors = await utc.GetUsagesJobsByIdErrors(failing.id, { page: 0, size: 10 });

  out.legacy = await utc.PostUsages({
    CustomerTenantID: env("UTS_IOT_TENANT"),
    CustomerUserID: "client-user",
    UTSUsageData: [
      { resourceAlias: "app", resourceName: "asset-1", UsageData: [{ usage: 2, usageUnit: "client-unit", usageDate: new Date().toISOString() }] },
    ],
  });
  out.list = await utc.GetUsagesJobs({ date: new Date(), size: 100 });
  out.ids = [accepted.id, failing.id];
  process.stdout.write(JSON.stringify(out) + "\n");
}

main().catch((err) => {
  process.stderr.write(`official client failed: ${err && err.stack ? err.stack : err}\n`);
  process.exit(1);
});
