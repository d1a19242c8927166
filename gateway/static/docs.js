// Swagger UI for this gateway's live schema. Relative URL: works under a path prefix (an API Gateway stage).
// No validator badge (it would call validator.swagger.io), no configuration from the query string.
"use strict";
window.ui = SwaggerUIBundle({
  url: new URL("openapi.json", document.baseURI).href,
  dom_id: "#swagger-ui",
  validatorUrl: null,
  queryConfigEnabled: false,
  deepLinking: false,
});
