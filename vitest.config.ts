import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    projects: [
      { test: { name: 'unit', include: ['test/unit/**/*.test.ts'], testTimeout: 30_000 } },
      {
        test: {
          name: 'peers',
          include: ['test/peers/**/*.test.ts'],
          testTimeout: 300_000,
          hookTimeout: 300_000,
          // the real peers share ports and a Notary server: one file at a time
          fileParallelism: false,
        },
      },
    ],
  },
});
