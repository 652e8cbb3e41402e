/**
 * A read-through repository: lookups go to the cache first and fall back to
 * a slow "database" on a miss. Writes update the database and invalidate.
 */

import {
  failure,
  flatMapAsync,
  fromMaybe,
  match,
  resourceError,
  success,
  validationError,
  type QiError,
  type Result,
} from "@qi/base";
import type { ICache, Logger } from "@qi/core";

/** A user profile as stored in the fake database. */
export interface UserProfile {
  readonly id: string;
  readonly name: string;
  readonly plan: "free" | "pro";
}

/** The slow backing store the cache sits in front of. */
export interface ProfileStore {
  load(id: string): Promise<Result<UserProfile>>;
  save(profile: UserProfile): Promise<Result<UserProfile>>;
}

/** An in-memory ProfileStore that counts how often it is hit. */
export class FakeProfileStore implements ProfileStore {
  private readonly rows = new Map<string, UserProfile>();
  loads = 0;

  constructor(seed: readonly UserProfile[]) {
    for (const row of seed) this.rows.set(row.id, row);
  }

  async load(id: string): Promise<Result<UserProfile>> {
    this.loads++;
    return fromMaybe(this.rows.get(id), resourceError(`No profile with id ${id}`, { id }));
  }

  async save(profile: UserProfile): Promise<Result<UserProfile>> {
    if (profile.name.trim() === "") {
      return failure(validationError("Profile name must not be blank", { id: profile.id }));
    }
    this.rows.set(profile.id, profile);
    return success(profile);
  }
}

/** Cache key for a profile id. */
export const profileKey = (id: string): string => `profile:${id}`;

/** Read-through, write-invalidate repository of profiles. */
export class CachedProfileRepository {
  constructor(
    private readonly cache: ICache,
    private readonly store: ProfileStore,
    private readonly logger: Logger,
    private readonly ttlSeconds = 30,
  ) {}

  /** Fetch a profile, loading it into the cache on a miss. */
  async findById(id: string): Promise<Result<UserProfile, QiError>> {
    if (id.trim() === "") return failure(validationError("Profile id is required"));
    const result = await this.cache.getOrSet(profileKey(id), () => this.store.load(id), this.ttlSeconds);
    match(
      (profile: UserProfile) => this.logger.debug("profile resolved", { id, plan: profile.plan }),
      (error: QiError) => this.logger.warn("profile lookup failed", { id, code: error.code }),
      result,
    );
    return result;
  }

  /** Save a profile and drop its cached copy so the next read is fresh. */
  async update(profile: UserProfile): Promise<Result<UserProfile, QiError>> {
    return flatMapAsync(
      async (saved: UserProfile) => {
        const evicted = await this.cache.delete(profileKey(saved.id));
        this.logger.info("profile updated", {
          id: saved.id,
          evicted: evicted.tag === "success" && evicted.value,
        });
        return success(saved);
      },
      await this.store.save(profile),
    );
  }

  /** Upgrade to the pro plan; already-pro users are left alone. */
  async upgrade(id: string): Promise<Result<UserProfile, QiError>> {
    const current = await this.findById(id);
    return flatMapAsync(
      async (profile: UserProfile) =>
        profile.plan === "pro" ? success(profile) : this.update({ ...profile, plan: "pro" }),
      current,
    );
  }
}
