// Node.js only: a node reached over gRPC on HTTP/2, as server-side code calls it.
//
//   import { connect } from "@hanzo/node-client/node";
//   const node = connect("http://127.0.0.1:8682");

import { createGrpcTransport } from "@connectrpc/connect-node";

import { HanzoNode } from "./index.js";

/** A node at `baseUrl` over gRPC (HTTP/2). */
export function connect(baseUrl: string): HanzoNode {
  return new HanzoNode((interceptors) => createGrpcTransport({ baseUrl, interceptors }));
}
