import { it } from 'vitest';
import { globMatch } from '../../trust/trusted-set.js';
it('glob', () => {
  for (const [p, t] of [['[^a]', 'b'], ['[^a]', '^'], ['[!]a]x', 'bx'], ['[!]a]x', ']x'], ['[]a]', ']'], ['[\\\\]', '\\\\'], ['[a-c]', 'b']]) console.log('glob', JSON.stringify(p), JSON.stringify(t), globMatch(p!, t!));
});
