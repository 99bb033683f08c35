// ESLint for the web UI's script, run by the lint tier (./build.sh test lint) from the
// repository root: eslint -c tools/eslint/eslint.config.mjs webui
import js from "@eslint/js";
import globals from "globals";

// The page's promise: values from the API reach the DOM through textContent and attributes only.
const htmlSinks = ["innerHTML", "outerHTML"].map((property) => ({
  property,
  message: "Build nodes with h() or set textContent: API values never become HTML.",
}));

export default [
  js.configs.recommended,
  {
    files: ["webui/**/*.js"],
    languageOptions: {
      ecmaVersion: 2024,
      sourceType: "module",
      globals: globals.browser,
    },
    linterOptions: { reportUnusedDisableDirectives: "error" },
    rules: {
      eqeqeq: ["error", "always", { null: "ignore" }],
      "no-var": "error",
      "prefer-const": "error",
      "no-eval": "error",
      "no-implied-eval": "error",
      "no-new-func": "error",
      "no-restricted-properties": ["error", ...htmlSinks],
      "no-restricted-syntax": [
        "error",
        {
          selector: "CallExpression[callee.property.name='insertAdjacentHTML']",
          message: "Build nodes with h(): API values never become HTML.",
        },
        {
          selector: "CallExpression[callee.object.name='document'][callee.property.name='write']",
          message: "Build nodes with h(): API values never become HTML.",
        },
      ],
      // `({ _id, ...rule }) => rule` drops a key on purpose.
      "no-unused-vars": ["error", { ignoreRestSiblings: true }],
    },
  },
];
