// ESLint's flat config for the console's ES modules (service/console/*.js), run by
// `make lint`. The versions are pinned in package.json and package-lock.json.
import js from "@eslint/js";
import globals from "globals";

export default [
  { ignores: ["node_modules/", ".venv/", "build/", "runs/", "service/static/"] },
  js.configs.recommended,
  {
    files: ["service/console/**/*.js"],
    languageOptions: { ecmaVersion: 2022, sourceType: "module", globals: globals.browser },
    linterOptions: { reportUnusedDisableDirectives: "error" },
    rules: {
      eqeqeq: "error",
      "no-var": "error",
      "prefer-const": "error",
      "no-shadow": "error",
      "no-unused-vars": ["error", { args: "after-used", caughtErrors: "all" }],
      "no-use-before-define": ["error", { functions: false, classes: true, variables: true }],
    },
  },
  {
    // api.js is the console's one door to HTTP (network errors and the error envelope).
    files: ["service/console/**/*.js"],
    ignores: ["service/console/api.js"],
    rules: { "no-restricted-globals": ["error", { name: "fetch", message: "call the API through api.js" }] },
  },
  {
    files: ["eslint.config.js"],
    languageOptions: { ecmaVersion: 2022, sourceType: "module", globals: globals.node },
  },
];
