// ESLint for the browser client (sanic_chat/web: plain ES modules, no build
// step) and its Node unit tests (tests/js).
import js from "@eslint/js";
import globals from "globals";

export default [
  { ignores: ["node_modules/**", "sanic_chat/web/vendor/**"] },
  js.configs.recommended,
  {
    files: ["sanic_chat/web/**/*.js"],
    languageOptions: {
      ecmaVersion: 2023,
      sourceType: "module",
      globals: { ...globals.browser },
    },
    rules: {
      eqeqeq: ["error", "always"],
      "no-var": "error",
      "prefer-const": "error",
      "no-unused-vars": ["error", { args: "after-used", caughtErrors: "none" }],
    },
  },
  {
    files: ["tests/js/**/*.mjs", "eslint.config.js"],
    languageOptions: {
      ecmaVersion: 2023,
      sourceType: "module",
      globals: { ...globals.node },
    },
  },
];
