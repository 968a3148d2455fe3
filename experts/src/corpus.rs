//! Deterministic synthetic corpora for the forge.
//!
//! The forge trains a tiny bilingual (English / Simplified Chinese) decoder `foundation` on
//! [`general_text`] and reasoning material, then branches it into `sft-sop`, fine-tuned on
//! standard-operating-procedure material. This module generates all of that text from a seed:
//!
//! * **General** sentences: templated everyday descriptions (weather, animals, cities, colours,
//!   time, food) plus a small list of simple facts, 5–25 words each.
//! * **Reasoning** pairs: 1–2 digit addition and subtraction, small multiplication, number
//!   comparison, unit conversion, word problems and three-person ordering logic. Every answer
//!   shows one worked step and ends with `The answer is N.` / `答案是N。`, so the final answer is
//!   exactly checkable with [`extract_final_answer`].
//! * **SOP** pairs: 21 customer-service, sales and tech-support intents, each with exactly one
//!   canonical numbered procedure per language, asked through 10 phrasings per intent and
//!   language (customer voice and agent voice, with slots such as order numbers and products).
//!
//! Held-out splits are decided by content, never by seed, so an eval set is disjoint from every
//! train set whatever seeds are used:
//!
//! * reasoning: a problem belongs to eval iff a stable hash of its canonical content
//!   (the underlying equation `(op, a, b)` with `a, b` sorted for commutative operations, the
//!   pair of compared numbers, or the relation and ordering of a logic puzzle) is `0 mod 5`.
//!   Language, template, names and nouns are not part of that content, so `12 + 7` in an eval
//!   set means no train set contains `12 + 7`, `7 + 12`, or a word problem that computes it.
//! * SOP: the last [`SOP_EVAL_TEMPLATES`] phrasings of every intent and language are used only
//!   by [`sop_eval`], and the last two values of every listed slot (products, plans, names…) are
//!   drawn only there. Answers are the same canonical procedures in both splits.
//!
//! Every function is deterministic per seed (ChaCha8), returns distinct items, alternates
//! English and Chinese (so each vector is half and half, ±1), and makes a bounded number of
//! attempts: it returns at most [`MAX_ITEMS`] items and may return fewer than asked when the
//! template space is nearly exhausted, but never loops forever.

use std::collections::HashSet;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Which material an [`Example`] belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Domain {
    General,
    Reasoning,
    Sop,
}

/// Language of an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lang {
    En,
    Zh,
}

/// One prompt/answer pair. `answer` is the exact expected completion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Example {
    pub prompt: String,
    pub answer: String,
    pub domain: Domain,
    pub lang: Lang,
}

/// Most items any generator returns in one call, whatever `n` asks for.
pub const MAX_ITEMS: usize = 100_000;

/// Number of phrasings per SOP intent and language reserved for [`sop_eval`].
pub const SOP_EVAL_TEMPLATES: usize = 2;

/// A generator gives up after this many consecutive duplicate or rejected draws.
const MAX_CONSECUTIVE_MISSES: usize = 20_000;

/// A reasoning problem is held out for eval iff `hash(content) % EVAL_MODULUS == 0`.
const EVAL_MODULUS: u64 = 5;

/// Listed slot values (products, plans, customer names, …) whose last this-many entries are
/// drawn only by the SOP eval set.
const HELD_OUT_VALUES: usize = 2;

const SALT_GENERAL: u64 = 0x6765_6e65_7261_6c00;
const SALT_REASONING_TRAIN: u64 = 0x7265_6173_7472_6e00;
const SALT_REASONING_EVAL: u64 = 0x7265_6173_6576_6c00;
const SALT_SOP_TRAIN: u64 = 0x736f_7074_7261_696e;
const SALT_SOP_EVAL: u64 = 0x736f_7065_7661_6c00;

// ---------------------------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------------------------

/// Plain text for tokenizer training and language modelling (general sentences, bilingual).
pub fn general_text(seed: u64, n: usize) -> Vec<String> {
    let mut rng = rng_for(seed, SALT_GENERAL);
    collect_distinct(
        n,
        &mut rng,
        |s: &String| s.as_str(),
        |rng, lang| Some(general_sentence(rng, lang)),
    )
}

/// Reasoning training pairs (never overlapping the eval set).
pub fn reasoning_train(seed: u64, n: usize) -> Vec<Example> {
    reasoning_items(seed, n, false)
        .into_iter()
        .map(|(_, ex)| ex)
        .collect()
}

/// SOP training pairs (never overlapping the eval set).
pub fn sop_train(seed: u64, n: usize) -> Vec<Example> {
    sop_items(seed, n, false)
        .into_iter()
        .map(|(_, ex)| ex)
        .collect()
}

/// Held-out reasoning eval set, disjoint from anything [`reasoning_train`] can produce for ANY
/// seed: its problems' canonical content hashes into the eval bucket.
pub fn reasoning_eval(seed: u64, n: usize) -> Vec<Example> {
    reasoning_items(seed, n, true)
        .into_iter()
        .map(|(_, ex)| ex)
        .collect()
}

/// Held-out SOP eval set, disjoint from anything [`sop_train`] can produce for ANY seed: its
/// prompts use phrasings the train set never uses. Answers are the canonical procedures.
pub fn sop_eval(seed: u64, n: usize) -> Vec<Example> {
    sop_items(seed, n, true)
        .into_iter()
        .map(|(_, ex)| ex)
        .collect()
}

/// The business area an SOP intent belongs to: the three SFT experts of the multi-expert
/// configuration are each branched on one area's procedures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SopArea {
    /// Orders, returns, refunds, deliveries, warranty, escalation.
    CustomerService,
    /// Plans, quotes, coupons, billing details, onboarding, cancellation.
    Sales,
    /// Accounts, passwords, two-factor, devices and apps.
    TechSupport,
}

impl SopArea {
    pub const ALL: [Self; 3] = [Self::CustomerService, Self::Sales, Self::TechSupport];

    /// `customer_service`, `sales`, `tech_support` (category names of the multi config).
    pub fn name(self) -> &'static str {
        match self {
            Self::CustomerService => "customer_service",
            Self::Sales => "sales",
            Self::TechSupport => "tech_support",
        }
    }

    /// The expert's model name: `sft-customer-service`, `sft-sales`, `sft-tech-support`.
    pub fn model_name(self) -> String {
        format!("sft-{}", self.name().replace('_', "-"))
    }

    fn of_intent(name: &str) -> Self {
        match name {
            "password_reset" | "account_locked" | "lost_2fa_phone" | "wifi_not_working"
            | "app_crashes" | "printer_offline" => Self::TechSupport,
            "cancel_subscription"
            | "upgrade_plan"
            | "update_billing_address"
            | "invoice_copy"
            | "sales_quote"
            | "coupon_not_working"
            | "onboarding" => Self::Sales,
            _ => Self::CustomerService,
        }
    }
}

/// SOP training pairs of one area (never overlapping the eval set).
pub fn sop_train_area(seed: u64, n: usize, area: SopArea) -> Vec<Example> {
    sop_area_items(seed, n, false, area)
}

/// Held-out SOP eval pairs of one area (same split rules as [`sop_eval`]).
pub fn sop_eval_area(seed: u64, n: usize, area: SopArea) -> Vec<Example> {
    sop_area_items(seed, n, true, area)
}

/// The final answer of a reasoning answer (see [`protocol::quality::extract_final_answer`]).
pub use protocol::quality::extract_final_answer;

// ---------------------------------------------------------------------------------------------
// Shared machinery
// ---------------------------------------------------------------------------------------------

/// SplitMix64 finaliser: a fixed, well-mixed 64-bit permutation.
fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn rng_for(seed: u64, salt: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(mix64(seed ^ mix64(salt)))
}

/// Draws items until `n` (at most [`MAX_ITEMS`]) distinct ones are found, the language
/// alternating En/Zh by position. Stops early after too many attempts or consecutive misses.
fn collect_distinct<T>(
    n: usize,
    rng: &mut ChaCha8Rng,
    key: impl Fn(&T) -> &str,
    mut make: impl FnMut(&mut ChaCha8Rng, Lang) -> Option<T>,
) -> Vec<T> {
    let target = n.min(MAX_ITEMS);
    let max_attempts = target
        .saturating_mul(16)
        .saturating_add(MAX_CONSECUTIVE_MISSES);
    let mut out = Vec::with_capacity(target.min(4096));
    let mut seen: HashSet<String> = HashSet::with_capacity(target.min(4096));
    let mut attempts = 0usize;
    let mut misses = 0usize;
    while out.len() < target && attempts < max_attempts && misses < MAX_CONSECUTIVE_MISSES {
        attempts += 1;
        let lang = if out.len() % 2 == 0 {
            Lang::En
        } else {
            Lang::Zh
        };
        match make(rng, lang) {
            Some(item) if seen.insert(key(&item).to_owned()) => {
                out.push(item);
                misses = 0;
            }
            _ => misses += 1,
        }
    }
    out
}

/// Replaces every `{slot}` in `template` with `value(slot)`; a slot named twice gets the same
/// value both times. An unterminated `{` is copied as is.
fn fill(template: &str, mut value: impl FnMut(&str) -> String) -> String {
    let mut out = String::with_capacity(template.len() + 32);
    let mut memo: Vec<(&str, String)> = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            rest = "";
            break;
        };
        let name = &after[..end];
        if let Some((_, v)) = memo.iter().find(|(k, _)| *k == name) {
            out.push_str(v);
        } else {
            let v = value(name);
            out.push_str(&v);
            memo.push((name, v));
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

fn choose<'a>(rng: &mut ChaCha8Rng, list: &[&'a str]) -> &'a str {
    list[rng.random_range(0..list.len())]
}

fn by_lang<'a>(lang: Lang, en: &'a [&'a str], zh: &'a [&'a str]) -> &'a [&'a str] {
    match lang {
        Lang::En => en,
        Lang::Zh => zh,
    }
}

// ---------------------------------------------------------------------------------------------
// General text
// ---------------------------------------------------------------------------------------------

const GENERAL_EN: &[&str] = &[
    "The weather in {city} is {weather} today.",
    "On {day} {tod}, {name} goes to the {place} with {friend}.",
    "The {colour} {object} is on the {furniture} in the living room.",
    "{name} eats {food} for {meal} and drinks a cup of {drink}.",
    "The {animal} is sleeping near the {place} this {tod}.",
    "It is {hour} o'clock, and {name} wants to {activity}.",
    "In {season}, many people in {city} like to {activity}.",
    "My favourite colour is {colour}, and my favourite animal is the {animal}.",
    "{name} lives in {city} and visits the {place} every {day}.",
    "When it is {weather}, {name} takes the {colour} umbrella.",
    "The {place} in {city} is quiet on {day} {tod}.",
    "There are {num} {animals} on a farm near {city}.",
    "{name} buys {num} {fruits} at the market on {day}.",
    "At {hour} o'clock in the {tod}, the {animal} eats its food.",
    "The sky over {city} is {sky} this {tod}.",
    "{name} and {friend} cook {food} together for {meal}.",
    "{name} puts the {colour} {object} on the {furniture}.",
    "Every {day}, {name} drinks {drink} at {hour} o'clock.",
    "{name} is reading a book about the {animal} in the {place}.",
    "{fact}",
];

const GENERAL_ZH: &[&str] = &[
    "今天{city}的天气很{weather}。",
    "今天{city}{weather_event}。",
    "{day}{tod}，{name}和{friend}一起去{place}。",
    "{colour}的{object}放在客厅的{furniture}上。",
    "{name}{meal}吃{food}，还喝了一杯{drink}。",
    "{animal}{tod}在{place}旁边睡觉。",
    "现在是{hour}点，{name}想去{activity}。",
    "{season}的时候，{city}的很多人喜欢{activity}。",
    "我最喜欢的颜色是{colour}，最喜欢的动物是{animal}。",
    "{name}住在{city}，每个{day}都去{place}。",
    "天气{weather}的时候，{name}会带上那把{colour}的雨伞。",
    "{day}{tod}，{city}的{place}很安静。",
    "{city}附近的农场里有{num}{farm}。",
    "{name}{day}在市场上买了{num}{fruit}。",
    "{hour}点的时候，{animal}开始吃东西。",
    "今天{tod}，{city}的天空很{sky}。",
    "{name}和{friend}一起做{food}当{meal}。",
    "{name}把{colour}的{object}放在{furniture}上。",
    "每个{day}，{name}都在{hour}点喝{drink}。",
    "{fact}",
];

const FACTS_EN: &[&str] = &[
    "A week has seven days.",
    "There are twelve months in a year.",
    "The sun rises in the east.",
    "Water freezes at zero degrees Celsius.",
    "Fish live in water and breathe with gills.",
    "Bees make honey from flowers.",
    "Snow is cold and white.",
    "A day has twenty four hours.",
    "Plants need water and sunlight to grow.",
    "The moon shines in the sky at night.",
    "Cows give us fresh milk every day.",
    "Birds have feathers and most birds can fly.",
    "An hour has sixty minutes.",
    "Spring comes after winter every year.",
    "Lemons taste sour and sugar tastes sweet.",
    "Red and yellow make orange.",
    "Blue and yellow make green.",
    "Elephants are the largest animals on land.",
    "It is dark at night and bright during the day.",
    "Rain falls from the clouds.",
];

const FACTS_ZH: &[&str] = &[
    "一个星期有七天。",
    "一年有十二个月。",
    "太阳从东方升起。",
    "水在零摄氏度会结冰。",
    "鱼生活在水里，用鳃呼吸。",
    "蜜蜂用花蜜酿蜂蜜。",
    "雪是白色的，摸起来很冷。",
    "一天有二十四个小时。",
    "植物生长需要水和阳光。",
    "月亮在晚上挂在天上。",
    "奶牛每天给我们提供新鲜的牛奶。",
    "鸟有羽毛，大多数鸟都会飞。",
    "一个小时有六十分钟。",
    "每年冬天过去就是春天。",
    "柠檬是酸的，糖是甜的。",
    "红色和黄色混在一起是橙色。",
    "蓝色和黄色混在一起是绿色。",
    "大象是陆地上最大的动物。",
    "白天很亮，晚上很黑。",
    "雨是从云里落下来的。",
];

const PEOPLE_EN: &[&str] = &[
    "Tom", "Amy", "Ben", "Lily", "Sam", "Lucy", "Jack", "Mia", "Leo", "Emma", "Max", "Anna",
];
const PEOPLE_ZH: &[&str] = &[
    "小明", "小红", "小刚", "小丽", "小华", "小芳", "小军", "小美", "小强", "小雪", "小亮", "小云",
];

fn general_slot(rng: &mut ChaCha8Rng, lang: Lang, slot: &str) -> String {
    let en = lang == Lang::En;
    let list: &[&str] = match slot {
        "city" if en => &[
            "London", "Paris", "Tokyo", "Beijing", "Shanghai", "New York", "Sydney", "Cairo",
            "Rome", "Madrid", "Berlin", "Toronto", "Seoul", "Lima", "Nairobi", "Chengdu",
        ],
        "city" => &[
            "伦敦",
            "巴黎",
            "东京",
            "北京",
            "上海",
            "纽约",
            "悉尼",
            "开罗",
            "罗马",
            "马德里",
            "柏林",
            "多伦多",
            "首尔",
            "利马",
            "内罗毕",
            "成都",
        ],
        "weather" if en => &[
            "sunny", "rainy", "cloudy", "windy", "snowy", "foggy", "warm", "cold", "hot", "cool",
        ],
        "weather" => &["晴朗", "热", "冷", "凉快", "暖和", "潮湿", "干燥", "闷热"],
        "weather_event" => &["下雨了", "下雪了", "刮大风了", "是晴天", "是阴天", "有大雾"],
        "day" if en => &[
            "Monday",
            "Tuesday",
            "Wednesday",
            "Thursday",
            "Friday",
            "Saturday",
            "Sunday",
        ],
        "day" => &[
            "星期一",
            "星期二",
            "星期三",
            "星期四",
            "星期五",
            "星期六",
            "星期日",
        ],
        "tod" if en => &["morning", "afternoon", "evening"],
        "tod" => &["早上", "上午", "下午", "晚上"],
        "name" => by_lang(lang, PEOPLE_EN, PEOPLE_ZH),
        "friend" if en => &[
            "Grace", "Noah", "Ella", "Ryan", "Zoe", "Oscar", "Ruby", "Adam", "Chloe", "Henry",
        ],
        "friend" => &[
            "小文", "小杰", "小敏", "小波", "小琳", "小东", "小燕", "小龙", "小静", "小宇",
        ],
        "place" if en => &[
            "park", "garden", "river", "kitchen", "school", "market", "library", "beach", "forest",
            "station", "museum", "farm",
        ],
        "place" => &[
            "公园",
            "花园",
            "小河",
            "厨房",
            "学校",
            "市场",
            "图书馆",
            "海滩",
            "森林",
            "车站",
            "博物馆",
            "农场",
        ],
        "colour" if en => &[
            "red", "blue", "green", "yellow", "white", "black", "orange", "purple", "pink",
            "brown", "grey",
        ],
        "colour" => &[
            "红色", "蓝色", "绿色", "黄色", "白色", "黑色", "橙色", "紫色", "粉色", "棕色", "灰色",
        ],
        "object" if en => &[
            "cup", "chair", "book", "bag", "hat", "ball", "box", "lamp", "pen", "coat", "kite",
            "bike",
        ],
        "object" => &[
            "杯子",
            "椅子",
            "书",
            "包",
            "帽子",
            "球",
            "盒子",
            "台灯",
            "笔",
            "外套",
            "风筝",
            "自行车",
        ],
        "furniture" if en => &["table", "shelf", "bed", "desk", "sofa", "floor"],
        "furniture" => &["桌子", "书架", "床", "书桌", "沙发", "地板"],
        "food" if en => &[
            "rice",
            "bread",
            "noodles",
            "soup",
            "eggs",
            "fish",
            "cheese",
            "dumplings",
            "salad",
            "cake",
            "porridge",
            "tofu",
        ],
        "food" => &[
            "米饭", "面包", "面条", "汤", "鸡蛋", "鱼", "饺子", "包子", "粥", "蛋糕", "沙拉",
            "豆腐",
        ],
        "meal" if en => &["breakfast", "lunch", "dinner"],
        "meal" => &["早饭", "午饭", "晚饭"],
        "drink" if en => &["tea", "milk", "coffee", "water", "juice", "soy milk"],
        "drink" => &["茶", "牛奶", "咖啡", "水", "果汁", "豆浆"],
        "animal" if en => &[
            "cat", "dog", "rabbit", "horse", "duck", "bird", "cow", "sheep", "panda", "tiger",
            "fox", "goat", "monkey", "elephant", "turtle", "owl",
        ],
        "animal" => &[
            "小猫",
            "小狗",
            "兔子",
            "马",
            "鸭子",
            "小鸟",
            "奶牛",
            "绵羊",
            "熊猫",
            "老虎",
            "狐狸",
            "山羊",
            "猴子",
            "大象",
            "乌龟",
            "猫头鹰",
        ],
        "animals" => &[
            "cats", "dogs", "rabbits", "horses", "ducks", "cows", "sheep", "goats", "pigs",
            "chickens", "geese",
        ],
        "farm" => &[
            "只鸭子",
            "头牛",
            "匹马",
            "只羊",
            "只鸡",
            "头猪",
            "只鹅",
            "只兔子",
        ],
        "num" if en => &[
            "two", "three", "four", "five", "six", "seven", "eight", "nine",
        ],
        "num" => &["两", "三", "四", "五", "六", "七", "八", "九"],
        "activity" if en => &[
            "read a book",
            "play football",
            "ride a bike",
            "cook dinner",
            "draw a picture",
            "sing a song",
            "go swimming",
            "walk the dog",
            "listen to music",
            "fly a kite",
            "play chess",
            "visit friends",
        ],
        "activity" => &[
            "看书",
            "踢足球",
            "骑自行车",
            "做饭",
            "画画",
            "唱歌",
            "游泳",
            "遛狗",
            "听音乐",
            "放风筝",
            "下棋",
            "看望朋友",
        ],
        "season" if en => &["spring", "summer", "autumn", "winter"],
        "season" => &["春天", "夏天", "秋天", "冬天"],
        "fruits" => &[
            "apples", "oranges", "bananas", "pears", "peaches", "mangoes", "lemons", "grapes",
        ],
        "fruit" => &[
            "个苹果",
            "个橘子",
            "根香蕉",
            "个梨",
            "个西瓜",
            "个桃子",
            "串葡萄",
            "个芒果",
        ],
        "sky" if en => &["blue", "grey", "clear", "dark", "bright", "pink"],
        "sky" => &["蓝", "晴朗", "暗", "亮", "干净", "灰"],
        "fact" => by_lang(lang, FACTS_EN, FACTS_ZH),
        "hour" => return rng.random_range(1..=12u32).to_string(),
        _ => return format!("{{{slot}}}"),
    };
    choose(rng, list).to_owned()
}

fn general_sentence(rng: &mut ChaCha8Rng, lang: Lang) -> String {
    let template = choose(rng, by_lang(lang, GENERAL_EN, GENERAL_ZH));
    fill(template, |slot| general_slot(rng, lang, slot))
}

// ---------------------------------------------------------------------------------------------
// Reasoning
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Add,
    Sub,
    Mul,
}

/// An equation `a op b`; subtraction always has `a >= b`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Math {
    op: Op,
    a: u32,
    b: u32,
}

impl Math {
    fn result(self) -> u32 {
        match self.op {
            Op::Add => self.a + self.b,
            Op::Sub => self.a - self.b,
            Op::Mul => self.a * self.b,
        }
    }

    fn symbol(self) -> &'static str {
        match self.op {
            Op::Add => "+",
            Op::Sub => "-",
            Op::Mul => "×",
        }
    }

    /// Canonical content: commutative operations ignore operand order.
    fn key(self) -> [u32; 5] {
        match self.op {
            Op::Add => [1, self.a.min(self.b), self.a.max(self.b), 0, 0],
            Op::Sub => [2, self.a, self.b, 0, 0],
            Op::Mul => [3, self.a.min(self.b), self.a.max(self.b), 0, 0],
        }
    }
}

/// One unit conversion `a from = a × factor to`.
struct Unit {
    factor: u32,
    max: u32,
    en_one: &'static str,
    en_many: &'static str,
    en_to: &'static str,
    en_sym_from: &'static str,
    en_sym_to: &'static str,
    zh_from: &'static str,
    zh_to: &'static str,
}

const UNITS: &[Unit] = &[
    Unit {
        factor: 1000,
        max: 99,
        en_one: "kilometer",
        en_many: "kilometers",
        en_to: "meters",
        en_sym_from: "km",
        en_sym_to: "m",
        zh_from: "千米",
        zh_to: "米",
    },
    Unit {
        factor: 100,
        max: 99,
        en_one: "meter",
        en_many: "meters",
        en_to: "centimeters",
        en_sym_from: "m",
        en_sym_to: "cm",
        zh_from: "米",
        zh_to: "厘米",
    },
    Unit {
        factor: 1000,
        max: 99,
        en_one: "kilogram",
        en_many: "kilograms",
        en_to: "grams",
        en_sym_from: "kg",
        en_sym_to: "g",
        zh_from: "千克",
        zh_to: "克",
    },
    Unit {
        factor: 60,
        max: 24,
        en_one: "hour",
        en_many: "hours",
        en_to: "minutes",
        en_sym_from: "h",
        en_sym_to: "min",
        zh_from: "小时",
        zh_to: "分钟",
    },
    Unit {
        factor: 60,
        max: 60,
        en_one: "minute",
        en_many: "minutes",
        en_to: "seconds",
        en_sym_from: "min",
        en_sym_to: "s",
        zh_from: "分钟",
        zh_to: "秒",
    },
    Unit {
        factor: 10,
        max: 99,
        en_one: "yuan",
        en_many: "yuan",
        en_to: "jiao",
        en_sym_from: "yuan",
        en_sym_to: "jiao",
        zh_from: "元",
        zh_to: "角",
    },
];

/// A comparative relation for ordering puzzles.
struct Relation {
    en_more: &'static str,
    en_less: &'static str,
    en_most: &'static str,
    en_least: &'static str,
    en_order: &'static str,
    zh_more: &'static str,
    zh_less: &'static str,
    zh_most: &'static str,
    zh_least: &'static str,
    zh_order: &'static str,
}

const RELATIONS: &[Relation] = &[
    Relation {
        en_more: "taller",
        en_less: "shorter",
        en_most: "tallest",
        en_least: "shortest",
        en_order: "From tallest to shortest",
        zh_more: "高",
        zh_less: "矮",
        zh_most: "最高",
        zh_least: "最矮",
        zh_order: "从高到矮",
    },
    Relation {
        en_more: "older",
        en_less: "younger",
        en_most: "oldest",
        en_least: "youngest",
        en_order: "From oldest to youngest",
        zh_more: "年纪大",
        zh_less: "年纪小",
        zh_most: "年纪最大",
        zh_least: "年纪最小",
        zh_order: "从年长到年幼",
    },
    Relation {
        en_more: "faster",
        en_less: "slower",
        en_most: "fastest",
        en_least: "slowest",
        en_order: "From fastest to slowest",
        zh_more: "跑得快",
        zh_less: "跑得慢",
        zh_most: "跑得最快",
        zh_least: "跑得最慢",
        zh_order: "从快到慢",
    },
    Relation {
        en_more: "heavier",
        en_less: "lighter",
        en_most: "heaviest",
        en_least: "lightest",
        en_order: "From heaviest to lightest",
        zh_more: "重",
        zh_less: "轻",
        zh_most: "最重",
        zh_least: "最轻",
        zh_order: "从重到轻",
    },
];

/// Countable things for word problems: English plural, Chinese noun, Chinese classifier.
const ITEMS: &[(&str, &str, &str)] = &[
    ("apples", "苹果", "个"),
    ("pencils", "铅笔", "支"),
    ("stickers", "贴纸", "张"),
    ("books", "书", "本"),
    ("cookies", "饼干", "块"),
    ("marbles", "弹珠", "颗"),
    ("oranges", "橘子", "个"),
    ("balloons", "气球", "个"),
    ("cards", "卡片", "张"),
    ("eggs", "鸡蛋", "个"),
];

const ADD_EN: &[&str] = &[
    "What is {a} + {b}?",
    "Calculate {a} + {b}.",
    "What is {a} plus {b}?",
    "Add {a} and {b}.",
    "What is the sum of {a} and {b}?",
];
const ADD_ZH: &[&str] = &[
    "{a} + {b} 等于多少？",
    "计算 {a} + {b}。",
    "{a}加{b}等于多少？",
    "求{a}与{b}的和。",
    "{a}和{b}的和是多少？",
];
const SUB_EN: &[&str] = &[
    "What is {a} - {b}?",
    "Calculate {a} - {b}.",
    "What is {a} minus {b}?",
    "Subtract {b} from {a}.",
    "What is the difference between {a} and {b}?",
];
const SUB_ZH: &[&str] = &[
    "{a} - {b} 等于多少？",
    "计算 {a} - {b}。",
    "{a}减{b}等于多少？",
    "从{a}中减去{b}，结果是多少？",
    "{a}与{b}的差是多少？",
];
const MUL_EN: &[&str] = &[
    "What is {a} × {b}?",
    "Calculate {a} × {b}.",
    "What is {a} times {b}?",
    "Multiply {a} by {b}.",
    "What is the product of {a} and {b}?",
];
const MUL_ZH: &[&str] = &[
    "{a} × {b} 等于多少？",
    "计算 {a} × {b}。",
    "{a}乘{b}等于多少？",
    "{a}乘以{b}是多少？",
    "求{a}与{b}的积。",
];

const WORD_ADD_EN: &[&str] = &[
    "{name} has {a} {items} and buys {b} more. How many {items} does {name} have now?",
    "There are {a} {items} in a box. {name} puts in {b} more. How many {items} are in the box now?",
    "{name} got {a} {items} in the morning and {b} more in the afternoon. How many {items} did {name} get in total?",
];
const WORD_ADD_ZH: &[&str] = &[
    "{name}有{a}{cl}{item}，又买了{b}{cl}。{name}现在有多少{cl}{item}？",
    "盒子里有{a}{cl}{item}，{name}又放进去{b}{cl}。盒子里现在有多少{cl}{item}？",
    "{name}上午收到{a}{cl}{item}，下午又收到{b}{cl}。{name}一共收到多少{cl}{item}？",
];
const WORD_SUB_EN: &[&str] = &[
    "{name} has {a} {items} and gives {b} to a friend. How many {items} are left?",
    "There are {a} {items} on the table. {name} takes away {b}. How many {items} are left on the table?",
    "{name} had {a} {items} and lost {b} of them. How many {items} does {name} have now?",
];
const WORD_SUB_ZH: &[&str] = &[
    "{name}有{a}{cl}{item}，送给朋友{b}{cl}。还剩多少{cl}{item}？",
    "桌上有{a}{cl}{item}，{name}拿走了{b}{cl}。桌上还剩多少{cl}{item}？",
    "{name}原来有{a}{cl}{item}，丢了{b}{cl}。{name}现在有多少{cl}{item}？",
];
const WORD_MUL_EN: &[&str] = &[
    "{name} has {a} bags with {b} {items} in each bag. How many {items} are there in total?",
    "There are {a} boxes and each box holds {b} {items}. How many {items} are there altogether?",
];
const WORD_MUL_ZH: &[&str] = &[
    "{name}有{a}个袋子，每个袋子里有{b}{cl}{item}。一共有多少{cl}{item}？",
    "有{a}个盒子，每个盒子装{b}{cl}{item}。一共有多少{cl}{item}？",
];

const CMP_LARGER_EN: &[&str] = &[
    "Which is larger, {a} or {b}?",
    "Which number is bigger: {a} or {b}?",
    "Which is greater, {a} or {b}?",
];
const CMP_SMALLER_EN: &[&str] = &[
    "Which is smaller, {a} or {b}?",
    "Which number is less: {a} or {b}?",
    "Which is less, {a} or {b}?",
];
const CMP_LARGER_ZH: &[&str] = &[
    "{a}和{b}哪个大？",
    "{a}和{b}哪个数更大？",
    "比较{a}和{b}，哪个更大？",
];
const CMP_SMALLER_ZH: &[&str] = &[
    "{a}和{b}哪个小？",
    "{a}和{b}哪个数更小？",
    "比较{a}和{b}，哪个更小？",
];

const UNIT_EN: &[&str] = &[
    "How many {to} are in {a} {from}?",
    "Convert {a} {from} to {to}.",
    "{a} {from} is how many {to}?",
];
const UNIT_ZH: &[&str] = &[
    "{a}{from}等于多少{to}？",
    "把{a}{from}换算成{to}。",
    "{a}{from}是多少{to}？",
];

const LOGIC_FACTS_EN: &[&str] = &[
    "{x} is {more} than {y}. {y} is {more} than {z}.",
    "{y} is {more} than {z}. {x} is {more} than {y}.",
    "{z} is {less} than {y}. {y} is {less} than {x}.",
    "{x} is {more} than {y}, and {z} is {less} than {y}.",
];
const LOGIC_FACTS_ZH: &[&str] = &[
    "{x}比{y}{more}，{y}比{z}{more}。",
    "{y}比{z}{more}，{x}比{y}{more}。",
    "{z}比{y}{less}，{y}比{x}{less}。",
    "{x}比{y}{more}，{z}比{y}{less}。",
];

/// The content of a reasoning problem; presentation (template, names, nouns) is chosen at
/// render time and does not affect the train/eval split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Problem {
    Bare(Math),
    Word(Math),
    Compare {
        a: u32,
        b: u32,
        larger: bool,
    },
    Convert {
        unit: usize,
        a: u32,
    },
    Logic {
        rel: usize,
        order: [usize; 3],
        ask_top: bool,
    },
}

impl Problem {
    /// Canonical content tuple that decides the split.
    fn key(self) -> [u32; 5] {
        match self {
            Problem::Bare(m) | Problem::Word(m) => m.key(),
            // A conversion is the multiplication `a × factor`.
            Problem::Convert { unit, a } => Math {
                op: Op::Mul,
                a,
                b: UNITS[unit].factor,
            }
            .key(),
            Problem::Compare { a, b, .. } => [4, a.min(b), a.max(b), 0, 0],
            Problem::Logic { rel, order, .. } => [
                5,
                rel as u32,
                order[0] as u32,
                order[1] as u32,
                order[2] as u32,
            ],
        }
    }

    fn is_eval(self) -> bool {
        // FNV-1a over the key, then a mixing finaliser: stable across platforms and versions.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for v in self.key() {
            for byte in v.to_le_bytes() {
                h ^= u64::from(byte);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
        let bucket = mix64(h) % EVAL_MODULUS;
        bucket == 0
    }

    /// The exact final answer, as [`extract_final_answer`] returns it: a test oracle computed
    /// from the content alone, independently of how `render_problem` words the answer.
    #[cfg(test)]
    fn solution(self, lang: Lang) -> String {
        match self {
            Problem::Bare(m) | Problem::Word(m) => m.result().to_string(),
            Problem::Convert { unit, a } => (a * UNITS[unit].factor).to_string(),
            Problem::Compare { a, b, larger } => {
                if larger { a.max(b) } else { a.min(b) }.to_string()
            }
            Problem::Logic { order, ask_top, .. } => {
                let people = by_lang(lang, PEOPLE_EN, PEOPLE_ZH);
                people[if ask_top { order[0] } else { order[2] }].to_owned()
            }
        }
    }
}

fn sample_problem(rng: &mut ChaCha8Rng) -> Problem {
    let kind = rng.random_range(0..100u32);
    match kind {
        0..20 => Problem::Bare(Math {
            op: Op::Add,
            a: rng.random_range(1..=99),
            b: rng.random_range(1..=99),
        }),
        20..40 => {
            let a = rng.random_range(1..=99);
            Problem::Bare(Math {
                op: Op::Sub,
                a,
                b: rng.random_range(0..=a),
            })
        }
        40..48 => Problem::Bare(Math {
            op: Op::Mul,
            a: rng.random_range(2..=12),
            b: rng.random_range(2..=12),
        }),
        48..58 => {
            let (a, b) = if rng.random_bool(0.3) {
                // Digit swaps such as 47 / 74.
                let x = rng.random_range(1..=9u32);
                let y = (x - 1 + rng.random_range(1..=8u32)) % 9 + 1;
                (10 * x + y, 10 * y + x)
            } else {
                let a = rng.random_range(1..=99u32);
                let b = (a + rng.random_range(1..=98u32) - 1) % 99 + 1;
                (a, b)
            };
            Problem::Compare {
                a,
                b,
                larger: rng.random_bool(0.5),
            }
        }
        58..70 => {
            let unit = rng.random_range(0..UNITS.len());
            Problem::Convert {
                unit,
                a: rng.random_range(1..=UNITS[unit].max),
            }
        }
        70..88 => {
            let math = match rng.random_range(0..3u32) {
                0 => Math {
                    op: Op::Add,
                    a: rng.random_range(2..=50),
                    b: rng.random_range(1..=30),
                },
                1 => {
                    let a = rng.random_range(5..=60);
                    Math {
                        op: Op::Sub,
                        a,
                        b: rng.random_range(1..a),
                    }
                }
                _ => Math {
                    op: Op::Mul,
                    a: rng.random_range(2..=9),
                    b: rng.random_range(2..=9),
                },
            };
            Problem::Word(math)
        }
        _ => {
            let n = PEOPLE_EN.len();
            let x = rng.random_range(0..n);
            let y = (x + rng.random_range(1..n)) % n;
            let mut z = rng.random_range(0..n);
            while z == x || z == y {
                z = (z + 1) % n;
            }
            Problem::Logic {
                rel: rng.random_range(0..RELATIONS.len()),
                order: [x, y, z],
                ask_top: rng.random_bool(0.5),
            }
        }
    }
}

fn equation_answer(m: Math, lang: Lang) -> String {
    let c = m.result();
    match lang {
        Lang::En => format!("{} {} {} = {c}. The answer is {c}.", m.a, m.symbol(), m.b),
        Lang::Zh => format!("{} {} {} = {c}。答案是{c}。", m.a, m.symbol(), m.b),
    }
}

fn render_problem(p: Problem, lang: Lang, rng: &mut ChaCha8Rng) -> Example {
    let en = lang == Lang::En;
    let (prompt, answer) = match p {
        Problem::Bare(m) => {
            let templates = match (m.op, en) {
                (Op::Add, true) => ADD_EN,
                (Op::Add, false) => ADD_ZH,
                (Op::Sub, true) => SUB_EN,
                (Op::Sub, false) => SUB_ZH,
                (Op::Mul, true) => MUL_EN,
                (Op::Mul, false) => MUL_ZH,
            };
            let prompt = fill(choose(rng, templates), |s| match s {
                "a" => m.a.to_string(),
                "b" => m.b.to_string(),
                _ => format!("{{{s}}}"),
            });
            (prompt, equation_answer(m, lang))
        }
        Problem::Word(m) => {
            let templates = match (m.op, en) {
                (Op::Add, true) => WORD_ADD_EN,
                (Op::Add, false) => WORD_ADD_ZH,
                (Op::Sub, true) => WORD_SUB_EN,
                (Op::Sub, false) => WORD_SUB_ZH,
                (Op::Mul, true) => WORD_MUL_EN,
                (Op::Mul, false) => WORD_MUL_ZH,
            };
            let template = choose(rng, templates);
            let name = choose(rng, by_lang(lang, PEOPLE_EN, PEOPLE_ZH));
            let (items, item, cl) = ITEMS[rng.random_range(0..ITEMS.len())];
            let prompt = fill(template, |s| match s {
                "a" => m.a.to_string(),
                "b" => m.b.to_string(),
                "name" => name.to_owned(),
                "items" => items.to_owned(),
                "item" => item.to_owned(),
                "cl" => cl.to_owned(),
                _ => format!("{{{s}}}"),
            });
            (prompt, equation_answer(m, lang))
        }
        Problem::Compare { a, b, larger } => {
            let templates = match (larger, en) {
                (true, true) => CMP_LARGER_EN,
                (false, true) => CMP_SMALLER_EN,
                (true, false) => CMP_LARGER_ZH,
                (false, false) => CMP_SMALLER_ZH,
            };
            let prompt = fill(choose(rng, templates), |s| match s {
                "a" => a.to_string(),
                "b" => b.to_string(),
                _ => format!("{{{s}}}"),
            });
            let (hi, lo) = (a.max(b), a.min(b));
            let answer = match (larger, en) {
                (true, true) => format!("{hi} > {lo}. The answer is {hi}."),
                (false, true) => format!("{lo} < {hi}. The answer is {lo}."),
                (true, false) => format!("{hi} > {lo}。答案是{hi}。"),
                (false, false) => format!("{lo} < {hi}。答案是{lo}。"),
            };
            (prompt, answer)
        }
        Problem::Convert { unit, a } => {
            let u = &UNITS[unit];
            let c = a * u.factor;
            let f = u.factor;
            let template = choose(rng, by_lang(lang, UNIT_EN, UNIT_ZH));
            let prompt = fill(template, |s| match (s, en) {
                ("a", _) => a.to_string(),
                ("from", true) => (if a == 1 { u.en_one } else { u.en_many }).to_owned(),
                ("to", true) => u.en_to.to_owned(),
                ("from", false) => u.zh_from.to_owned(),
                ("to", false) => u.zh_to.to_owned(),
                _ => format!("{{{s}}}"),
            });
            let answer = if en {
                let (sf, st) = (u.en_sym_from, u.en_sym_to);
                format!("{a} {sf} = {a} × {f} {st} = {c} {st}. The answer is {c}.")
            } else {
                let (zf, zt) = (u.zh_from, u.zh_to);
                format!("{a}{zf} = {a} × {f}{zt} = {c}{zt}。答案是{c}。")
            };
            (prompt, answer)
        }
        Problem::Logic {
            rel,
            order,
            ask_top,
        } => {
            let r = &RELATIONS[rel];
            let people = by_lang(lang, PEOPLE_EN, PEOPLE_ZH);
            let (x, y, z) = (people[order[0]], people[order[1]], people[order[2]]);
            let facts = fill(
                choose(rng, by_lang(lang, LOGIC_FACTS_EN, LOGIC_FACTS_ZH)),
                |s| match (s, en) {
                    ("x", _) => x.to_owned(),
                    ("y", _) => y.to_owned(),
                    ("z", _) => z.to_owned(),
                    ("more", true) => r.en_more.to_owned(),
                    ("less", true) => r.en_less.to_owned(),
                    ("more", false) => r.zh_more.to_owned(),
                    ("less", false) => r.zh_less.to_owned(),
                    _ => format!("{{{s}}}"),
                },
            );
            let who = if ask_top { x } else { z };
            if en {
                let sup = if ask_top { r.en_most } else { r.en_least };
                (
                    format!("{facts} Who is the {sup}?"),
                    format!("{}: {x}, {y}, {z}. The answer is {who}.", r.en_order),
                )
            } else {
                let sup = if ask_top { r.zh_most } else { r.zh_least };
                (
                    format!("{facts}谁{sup}？"),
                    format!("{}：{x}、{y}、{z}。答案是{who}。", r.zh_order),
                )
            }
        }
    };
    Example {
        prompt,
        answer,
        domain: Domain::Reasoning,
        lang,
    }
}

fn reasoning_items(seed: u64, n: usize, eval: bool) -> Vec<(Problem, Example)> {
    let salt = if eval {
        SALT_REASONING_EVAL
    } else {
        SALT_REASONING_TRAIN
    };
    let mut rng = rng_for(seed, salt);
    collect_distinct(
        n,
        &mut rng,
        |(_, ex): &(Problem, Example)| ex.prompt.as_str(),
        |rng, lang| {
            // Rejection sampling into the requested split (about 1 in 5 problems is eval).
            (0..64).find_map(|_| {
                let p = sample_problem(rng);
                (p.is_eval() == eval).then(|| (p, render_problem(p, lang, rng)))
            })
        },
    )
}

// ---------------------------------------------------------------------------------------------
// SOP
// ---------------------------------------------------------------------------------------------

/// Phrasings per intent and language; the last [`SOP_EVAL_TEMPLATES`] are eval-only.
const SOP_TEMPLATES: usize = 10;
const SOP_TRAIN_TEMPLATES: usize = SOP_TEMPLATES - SOP_EVAL_TEMPLATES;

/// One SOP intent: its canonical procedure per language and its question phrasings.
struct Intent {
    name: &'static str,
    en: &'static str,
    zh: &'static str,
    q_en: [&'static str; SOP_TEMPLATES],
    q_zh: [&'static str; SOP_TEMPLATES],
}

impl Intent {
    fn answer(&self, lang: Lang) -> &'static str {
        match lang {
            Lang::En => self.en,
            Lang::Zh => self.zh,
        }
    }

    fn questions(&self, lang: Lang) -> &[&'static str; SOP_TEMPLATES] {
        match lang {
            Lang::En => &self.q_en,
            Lang::Zh => &self.q_zh,
        }
    }
}

const INTENTS: &[Intent] = &[
    Intent {
        name: "password_reset",
        en: "1. Verify the customer's identity with their email and phone number. 2. Send a password reset link to the registered email. 3. Ask the customer to set a new password within 30 minutes. 4. Confirm they can log in successfully.",
        zh: "1. 通过邮箱和手机号核实客户身份。2. 向注册邮箱发送密码重置链接。3. 请客户在30分钟内设置新密码。4. 确认客户能够成功登录。",
        q_en: [
            "I forgot my password and can't log in with {email}.",
            "How do I reset my password? My login is {email}.",
            "My password stopped working on the {app}. Can you reset it?",
            "Please send me a password reset link for {email}.",
            "A customer forgot their password. What is the procedure?",
            "{name} cannot remember the password for {email}. How do I help?",
            "What steps do I follow to reset a customer's password?",
            "I need a new password for my account, I can't sign in to the {app}.",
            "The {app} keeps saying my password is wrong and I want to change it.",
            "Caller {name} needs their password reset. Walk me through it.",
        ],
        q_zh: [
            "我忘记密码了，用{email}登录不了。",
            "怎么重置密码？我的登录邮箱是{email}。",
            "我在{app}上的密码突然不能用了，能帮我重置吗？",
            "请给{email}发一个密码重置链接。",
            "客户忘记了密码，应该怎么处理？",
            "{name}想不起{email}的密码了，我该怎么帮助客户？",
            "帮客户重置密码的步骤是什么？",
            "我需要一个新密码，{app}登不进去了。",
            "{app}一直提示我密码错误，我想改密码。",
            "来电客户{name}需要重置密码，请告诉我流程。",
        ],
    },
    Intent {
        name: "refund_request",
        en: "1. Verify the order number and purchase date. 2. Check that the order is within the 30-day refund window. 3. Submit the refund to the original payment method. 4. Tell the customer the refund arrives in 5 to 7 business days.",
        zh: "1. 核实订单号和购买日期。2. 确认订单在30天退款期限内。3. 按原支付方式提交退款。4. 告知客户退款将在5至7个工作日内到账。",
        q_en: [
            "I want a refund for order {order}.",
            "Can I get my money back for the {product} I bought?",
            "Please refund the {amount} I paid for order {order}.",
            "How do I request a refund for my {product}?",
            "A customer is asking for a refund on order {order}. What do I do?",
            "What is the refund procedure for a customer who paid {amount}?",
            "{name} wants their money back for the {product}. How should I handle it?",
            "I'm not happy with the {product} and I'd like a refund.",
            "I'd like my {amount} back, the {product} was not what I expected.",
            "How should an agent process a refund for order {order}?",
        ],
        q_zh: [
            "我想申请订单{order}的退款。",
            "我买的{product}可以退钱吗？",
            "请把订单{order}支付的{amount}退给我。",
            "我的{product}怎么申请退款？",
            "客户要求订单{order}退款，我该怎么做？",
            "客户付了{amount}，退款流程是什么？",
            "{name}想要回购买{product}的钱，应该怎么处理？",
            "我对{product}不满意，想退款。",
            "{product}和我想的不一样，请把{amount}退给我。",
            "客服应该如何为订单{order}办理退款？",
        ],
    },
    Intent {
        name: "return_item",
        en: "1. Verify the order number and the item to return. 2. Confirm the item is unused and within 30 days. 3. Email the customer a prepaid return label. 4. Process the refund once the warehouse receives the item.",
        zh: "1. 核实订单号和要退回的商品。2. 确认商品未使用且在30天内。3. 通过邮件向客户发送预付退货标签。4. 仓库收到商品后办理退款。",
        q_en: [
            "I want to return the {product} from order {order}.",
            "How do I send back the {product} I bought?",
            "Can I return an item from order {order}?",
            "What is your return process for the {product}?",
            "A customer wants to return their {product}. What are the steps?",
            "{name} would like to send back order {order}. How do I process the return?",
            "I need a return label for the {product}.",
            "How do I handle a product return for order {order}?",
            "The {product} doesn't suit me, where do I ship it back?",
            "What should I tell {name} about returning the {product}?",
        ],
        q_zh: [
            "我想退回订单{order}里的{product}。",
            "我买的{product}怎么寄回去？",
            "订单{order}里的商品可以退货吗？",
            "{product}的退货流程是什么？",
            "客户想退一个{product}，步骤是什么？",
            "{name}想退回订单{order}，我怎么处理退货？",
            "我需要一张{product}的退货标签。",
            "订单{order}的退货应该怎么处理？",
            "这个{product}不适合我，要寄回到哪里？",
            "关于退回{product}，我应该怎么跟{name}说？",
        ],
    },
    Intent {
        name: "exchange_item",
        en: "1. Verify the order number and the item to exchange. 2. Check that the new size or colour is in stock. 3. Send a prepaid return label for the original item. 4. Ship the replacement as soon as the return is scanned.",
        zh: "1. 核实订单号和要换的商品。2. 确认新的尺码或颜色有库存。3. 发送原商品的预付退货标签。4. 退货扫描入库后立即寄出换货商品。",
        q_en: [
            "Can I exchange the {product} for a different size?",
            "I want to swap my {product} for the {colour} one.",
            "The {product} from order {order} is the wrong size. Can I exchange it?",
            "How do I exchange an item from order {order}?",
            "A customer wants to exchange their {product} for size {size}. What do I do?",
            "{name} ordered the wrong colour and wants the {colour} {product} instead.",
            "What is the exchange procedure for order {order}?",
            "I'd like to trade my {product} for size {size}.",
            "Is it possible to get the {product} in {colour} instead of the one I received?",
            "How do I help {name} swap an item in order {order}?",
        ],
        q_zh: [
            "{product}可以换个尺码吗？",
            "我想把{product}换成{colour}的。",
            "订单{order}里的{product}尺码不对，可以换吗？",
            "订单{order}里的商品怎么换货？",
            "客户想把{product}换成{size}码，我该怎么做？",
            "{name}选错了颜色，想换成{colour}的{product}。",
            "订单{order}的换货流程是什么？",
            "我想把{product}换成{size}码的。",
            "能不能把收到的{product}换成{colour}的？",
            "我怎么帮{name}换订单{order}里的商品？",
        ],
    },
    Intent {
        name: "order_tracking",
        en: "1. Ask for the order number and look up the shipment in the order system. 2. Share the carrier name, tracking number and expected delivery date. 3. If the order is more than 5 days late, open a delivery investigation.",
        zh: "1. 询问订单号并在订单系统中查询物流信息。2. 告知承运商、运单号和预计送达日期。3. 如果订单延误超过5天，发起配送调查。",
        q_en: [
            "Where is my order {order}?",
            "Can you track order {order} for me?",
            "My {product} hasn't arrived yet. Where is it?",
            "When will order {order} be delivered?",
            "A customer asks where order {order} is. How do I check?",
            "{name} wants a delivery update on the {product}. What are the steps?",
            "How do I look up the shipping status of an order?",
            "I ordered the {product} {days} days ago and still have no tracking information.",
            "Has order {order} shipped yet? I need it soon.",
            "What's the process for giving {name} a tracking update?",
        ],
        q_zh: [
            "我的订单{order}到哪里了？",
            "能帮我查一下订单{order}的物流吗？",
            "我的{product}还没到，现在在哪里？",
            "订单{order}什么时候能送到？",
            "客户问订单{order}到哪了，我怎么查？",
            "{name}想知道{product}的配送进度，步骤是什么？",
            "怎么查询订单的发货状态？",
            "我{days}天前订了{product}，到现在还没有物流信息。",
            "订单{order}发货了吗？我急着用。",
            "给{name}提供物流进度的流程是什么？",
        ],
    },
    Intent {
        name: "cancel_subscription",
        en: "1. Verify the account owner's identity. 2. Ask for the reason for cancelling and offer one retention discount. 3. If the customer still wants to cancel, cancel at the end of the billing period. 4. Send a cancellation confirmation email.",
        zh: "1. 核实账户持有人身份。2. 询问取消原因并提供一次挽留优惠。3. 如果客户仍要取消，在当前计费周期结束时取消。4. 发送取消确认邮件。",
        q_en: [
            "I want to cancel my {plan} subscription.",
            "How do I stop my {plan} plan from renewing?",
            "Please cancel my subscription before the next charge of {amount}.",
            "I don't use the service anymore. Cancel my membership please.",
            "A customer wants to cancel their {plan} subscription. What is the process?",
            "{name} asked to end their subscription. How do I handle it?",
            "What are the steps to cancel a customer's subscription?",
            "Can I unsubscribe from the {plan} plan today?",
            "I'd like to end my {plan} membership, it's too expensive.",
            "How do I process a subscription cancellation for {name}?",
        ],
        q_zh: [
            "我想取消我的{plan}订阅。",
            "怎么让{plan}套餐不再自动续费？",
            "请在下次扣{amount}之前取消我的订阅。",
            "我已经不用这个服务了，请取消我的会员。",
            "客户想取消{plan}订阅，流程是什么？",
            "{name}要求停止订阅，我该怎么处理？",
            "取消客户订阅的步骤是什么？",
            "我今天可以退订{plan}套餐吗？",
            "{plan}会员太贵了，我想取消。",
            "我怎么为{name}办理取消订阅？",
        ],
    },
    Intent {
        name: "upgrade_plan",
        en: "1. Verify the account and the current plan. 2. Explain the features and price of the new plan. 3. Apply the upgrade immediately and charge the prorated difference. 4. Send a confirmation email with the new plan details.",
        zh: "1. 核实账户和当前套餐。2. 说明新套餐的功能和价格。3. 立即升级并按比例收取差价。4. 发送包含新套餐详情的确认邮件。",
        q_en: [
            "I want to upgrade to the {plan} plan.",
            "How do I move from my current plan to {plan}?",
            "Can I get more features by switching to {plan}?",
            "Please upgrade my account to {plan} today.",
            "A customer wants to upgrade to {plan}. What do I do?",
            "{name} asked to move up to the {plan} plan. What are the steps?",
            "What is the procedure for a plan upgrade?",
            "How much extra do I pay if I upgrade to {plan} now?",
            "My team is growing and we need the {plan} tier instead.",
            "How should I handle {name}'s request for a higher plan?",
        ],
        q_zh: [
            "我想升级到{plan}。",
            "怎么从现在的套餐换到{plan}？",
            "换成{plan}可以有更多功能吗？",
            "请今天把我的账户升级到{plan}。",
            "客户想升级到{plan}，我该怎么做？",
            "{name}要求升级到{plan}，步骤是什么？",
            "套餐升级的流程是什么？",
            "现在升级到{plan}要多付多少钱？",
            "我们团队人变多了，需要换成{plan}。",
            "{name}想要更高级的套餐，我该如何处理？",
        ],
    },
    Intent {
        name: "update_billing_address",
        en: "1. Verify the customer's identity. 2. Ask for the new billing address and read it back to confirm. 3. Update the address in the billing system. 4. Tell the customer the change applies from the next invoice.",
        zh: "1. 核实客户身份。2. 询问新的账单地址并复述确认。3. 在计费系统中更新地址。4. 告知客户变更从下一张发票起生效。",
        q_en: [
            "I moved and need to update my billing address.",
            "How do I change the billing address on my account?",
            "Please change my billing address to {street}.",
            "My invoices show my old address. Can you fix it?",
            "A customer wants to update their billing address. What are the steps?",
            "{name} moved to {street}. How do I update the billing address?",
            "What is the procedure for changing a billing address?",
            "The billing address for my card ending {card} is wrong.",
            "Can you put {street} on my bills from now on?",
            "How do I record a new billing address for {name}?",
        ],
        q_zh: [
            "我搬家了，需要更新账单地址。",
            "怎么修改账户的账单地址？",
            "请把我的账单地址改成{street}。",
            "我的发票上还是旧地址，能帮我改一下吗？",
            "客户想更新账单地址，步骤是什么？",
            "{name}搬到了{street}，我怎么更新账单地址？",
            "修改账单地址的流程是什么？",
            "尾号{card}的银行卡账单地址不对。",
            "以后的账单能寄到{street}吗？",
            "我怎么为{name}登记新的账单地址？",
        ],
    },
    Intent {
        name: "double_charge",
        en: "1. Verify the customer's identity and the last four digits of the card. 2. Find both charges in the payment records. 3. Refund the duplicate charge. 4. Tell the customer the refund arrives in 3 to 5 business days.",
        zh: "1. 核实客户身份和银行卡后四位。2. 在支付记录中找到两笔扣款。3. 退还重复的扣款。4. 告知客户退款将在3至5个工作日内到账。",
        q_en: [
            "I was charged twice for order {order}.",
            "My card ending {card} shows two charges of {amount}.",
            "Why did you bill me twice in {month}?",
            "I see a duplicate payment of {amount} on my statement.",
            "A customer was charged twice. What do I do?",
            "{name} says the card ending {card} was billed twice. How do I handle it?",
            "What is the procedure for a double charge?",
            "You took {amount} from my account two times for the same order.",
            "There are two identical {amount} payments for order {order}, please fix this.",
            "How do I resolve a duplicate charge for {name}?",
        ],
        q_zh: [
            "订单{order}扣了我两次钱。",
            "我尾号{card}的卡显示扣了两笔{amount}。",
            "为什么{month}向我收了两次费？",
            "我的账单上有一笔重复的{amount}付款。",
            "客户被重复扣款了，我该怎么做？",
            "{name}说尾号{card}的卡被扣了两次，怎么处理？",
            "重复扣款的处理流程是什么？",
            "同一个订单你们从我账户里扣了两次{amount}。",
            "订单{order}有两笔一样的{amount}付款，请处理一下。",
            "我怎么为{name}解决重复扣款的问题？",
        ],
    },
    Intent {
        name: "invoice_copy",
        en: "1. Verify the account owner's identity. 2. Ask which month or order the invoice is for. 3. Download the invoice as a PDF from the billing system. 4. Email the invoice to the registered address.",
        zh: "1. 核实账户持有人身份。2. 询问需要哪个月份或哪个订单的发票。3. 从计费系统下载PDF格式的发票。4. 将发票发送到注册邮箱。",
        q_en: [
            "Can I get a copy of my invoice for {month}?",
            "I need the invoice for order {order}.",
            "Please email me the invoice from {month}.",
            "Where can I download my invoice for order {order}?",
            "A customer needs a copy of an invoice. What are the steps?",
            "{name} lost the invoice for {month}. How do I send a new copy?",
            "What is the procedure for sending an invoice copy?",
            "My accountant needs the invoice for {company}.",
            "Could you resend the {month} bill as a PDF?",
            "How do I provide {name} with a duplicate invoice?",
        ],
        q_zh: [
            "能给我一份{month}的发票吗？",
            "我需要订单{order}的发票。",
            "请把{month}的发票发到我的邮箱。",
            "订单{order}的发票在哪里下载？",
            "客户需要一份发票副本，步骤是什么？",
            "{name}弄丢了{month}的发票，我怎么重新发一份？",
            "补发发票的流程是什么？",
            "我们会计需要{company}的发票。",
            "能把{month}的账单用PDF再发一次吗？",
            "我怎么给{name}提供一份发票副本？",
        ],
    },
    Intent {
        name: "escalate_supervisor",
        en: "1. Apologise, then summarise the issue and the steps already taken. 2. Transfer the case to the on-duty supervisor with full notes. 3. Tell the customer a supervisor will reply within 24 hours.",
        zh: "1. 向客户道歉，总结问题和已采取的措施。2. 将工单连同完整记录转给值班主管。3. 告知客户主管会在24小时内回复。",
        q_en: [
            "I want to speak to your supervisor.",
            "Let me talk to a manager right now.",
            "This is the third time I'm calling about order {order}. Get me a supervisor.",
            "I'm not satisfied with your answer. Please escalate my case.",
            "A customer is angry and asks for a supervisor. What do I do?",
            "{name} wants to escalate the complaint. What are the steps?",
            "What is the procedure for escalating a case to a supervisor?",
            "Nobody has fixed my problem in {days} days. I want a manager.",
            "Put someone more senior on the line, I'm done with this.",
            "How do I hand {name}'s case over to a manager?",
        ],
        q_zh: [
            "我要找你们主管。",
            "让你们经理现在来跟我说。",
            "订单{order}的问题我已经打了三次电话了，请找主管来。",
            "我对你的答复不满意，请升级我的问题。",
            "客户很生气，要求找主管，我该怎么做？",
            "{name}要升级投诉，步骤是什么？",
            "把工单升级给主管的流程是什么？",
            "{days}天了都没人解决我的问题，我要找经理。",
            "换个级别更高的人来处理，我受够了。",
            "我怎么把{name}的工单转给经理？",
        ],
    },
    Intent {
        name: "account_locked",
        en: "1. Verify the customer's identity with two security questions. 2. Check the security log for the reason for the lock. 3. Unlock the account and reset the failed login counter. 4. Advise the customer to change their password.",
        zh: "1. 通过两个安全问题核实客户身份。2. 查看安全日志中的锁定原因。3. 解锁账户并重置登录失败次数。4. 建议客户修改密码。",
        q_en: [
            "My account is locked and I can't log in.",
            "It says my account {email} has been locked.",
            "I entered the wrong password too many times and now I'm locked out.",
            "How do I unlock my account?",
            "A customer's account is locked. What is the procedure?",
            "{name} is locked out of the {app}. How do I help?",
            "What steps do I follow to unlock an account?",
            "The {app} says my account is suspended for security reasons.",
            "I got a message that {email} is blocked, please open it again.",
            "How do I restore access for {name} after a lockout?",
        ],
        q_zh: [
            "我的账户被锁了，登录不了。",
            "系统提示我的账户{email}已被锁定。",
            "我输错密码太多次，现在被锁在外面了。",
            "怎么解锁我的账户？",
            "客户的账户被锁定了，流程是什么？",
            "{name}被锁在{app}外面了，我怎么帮助客户？",
            "解锁账户的步骤是什么？",
            "{app}提示我的账户因安全原因被冻结。",
            "我收到消息说{email}被封了，请帮我重新开通。",
            "账户锁定后，我怎么为{name}恢复访问？",
        ],
    },
    Intent {
        name: "lost_2fa_phone",
        en: "1. Verify the customer's identity with a photo ID. 2. Ask for a backup code; if there is none, start the recovery review. 3. Remove the old phone from two-factor authentication. 4. Guide the customer to register the new phone.",
        zh: "1. 通过带照片的身份证件核实客户身份。2. 询问备用验证码，如没有则启动账户恢复审核。3. 从双重验证中移除旧手机。4. 引导客户绑定新手机。",
        q_en: [
            "I lost my phone and can't get my two-factor code.",
            "My new {device} doesn't have my authenticator app. How do I log in?",
            "I can't receive the verification code because my phone was stolen.",
            "How do I reset two-factor authentication on {email}?",
            "A customer lost the phone used for 2FA. What do I do?",
            "{name} changed phones and can't get 2FA codes. What are the steps?",
            "What is the procedure when a customer loses their 2FA device?",
            "My old phone is broken and the login asks for a security code.",
            "I switched to a new {device} and now the sign-in code never arrives.",
            "How do I move {name}'s two-factor login to a new phone?",
        ],
        q_zh: [
            "我手机丢了，收不到双重验证码。",
            "我的新{device}上没有身份验证器，怎么登录？",
            "我的手机被偷了，收不到验证码。",
            "怎么重置{email}的双重验证？",
            "客户丢了用于双重验证的手机，我该怎么做？",
            "{name}换了手机，收不到验证码，步骤是什么？",
            "客户丢失双重验证设备时的流程是什么？",
            "我的旧手机坏了，登录时要输入安全码。",
            "我换了一台{device}，登录验证码一直收不到。",
            "我怎么把{name}的双重验证转到新手机上？",
        ],
    },
    Intent {
        name: "wifi_not_working",
        en: "1. Ask the customer to restart the router and wait two minutes. 2. Check that the router lights are green. 3. Check for an outage in the customer's area. 4. If it still fails, book a technician visit.",
        zh: "1. 请客户重启路由器并等待两分钟。2. 检查路由器指示灯是否为绿色。3. 查询客户所在区域是否有网络故障。4. 如果仍无法使用，预约技术人员上门。",
        q_en: [
            "My wifi is not working.",
            "The internet keeps dropping on my {router} router.",
            "My router lights are red and nothing connects.",
            "I can't connect to the internet since this morning.",
            "A customer's wifi is down. What are the troubleshooting steps?",
            "{name} says the {router} router has no internet. How do I help?",
            "What is the procedure when a customer has no wifi?",
            "My wifi has been very slow for {days} days.",
            "None of my devices can get online through the {router} router.",
            "How do I troubleshoot {name}'s home internet connection?",
        ],
        q_zh: [
            "我的无线网用不了。",
            "我的{router}路由器总是断网。",
            "路由器的灯是红的，什么都连不上。",
            "从今天早上开始就上不了网。",
            "客户的无线网断了，排查步骤是什么？",
            "{name}说{router}路由器没有网络，我怎么帮助客户？",
            "客户没有无线网时的处理流程是什么？",
            "我家的无线网已经慢了{days}天了。",
            "我所有设备通过{router}路由器都上不了网。",
            "我怎么排查{name}家里的网络连接问题？",
        ],
    },
    Intent {
        name: "app_crashes",
        en: "1. Ask for the device model and app version. 2. Ask the customer to update the app to the latest version. 3. Clear the app cache and restart the device. 4. If it still crashes, collect the crash log and open a bug report.",
        zh: "1. 询问设备型号和应用版本。2. 请客户将应用更新到最新版本。3. 清除应用缓存并重启设备。4. 如果仍然闪退，收集崩溃日志并提交缺陷报告。",
        q_en: [
            "The {app} crashes every time I open it.",
            "Your app keeps closing on my {device}.",
            "The {app} freezes and shuts down when I tap checkout.",
            "Why does the app crash on my {device}?",
            "A customer says the {app} keeps crashing. What do I do?",
            "{name} reports that the app closes on their {device}. What are the steps?",
            "What is the procedure for an app that keeps crashing?",
            "Since the last update the {app} won't stay open.",
            "Every time I log in, the {app} quits by itself on my {device}.",
            "How should I troubleshoot {name}'s crashing app?",
        ],
        q_zh: [
            "{app}每次打开就闪退。",
            "你们的应用在我的{device}上老是自动关闭。",
            "{app}一点结账就卡住然后退出。",
            "为什么应用在我的{device}上会崩溃？",
            "客户说{app}一直闪退，我该怎么做？",
            "{name}反映应用在{device}上会自动关闭，步骤是什么？",
            "应用反复崩溃时的处理流程是什么？",
            "上次更新以后{app}就打不开了。",
            "每次登录，{app}都会在我的{device}上自己退出。",
            "我应该怎么排查{name}的应用闪退问题？",
        ],
    },
    Intent {
        name: "printer_offline",
        en: "1. Check that the printer is powered on and shows no error. 2. Confirm the printer and computer are on the same network. 3. Remove and re-add the printer on the computer. 4. Print a test page to confirm.",
        zh: "1. 检查打印机已开机且没有报错。2. 确认打印机和电脑连接在同一网络。3. 在电脑上删除并重新添加打印机。4. 打印测试页进行确认。",
        q_en: [
            "My printer says it is offline.",
            "The {printer} printer won't print anything.",
            "My computer can't find the {printer} printer.",
            "Why does my printer show offline when it is turned on?",
            "A customer's printer is offline. What are the steps?",
            "{name} can't print to the {printer}. How do I help?",
            "What is the procedure for fixing an offline printer?",
            "Print jobs are stuck in the queue for the {printer}.",
            "The office printer {printer} stopped responding to my laptop.",
            "How do I get {name}'s printer back online?",
        ],
        q_zh: [
            "我的打印机显示离线。",
            "{printer}打印机什么都打印不出来。",
            "我的电脑找不到{printer}打印机。",
            "打印机明明开着，为什么显示离线？",
            "客户的打印机离线了，步骤是什么？",
            "{name}没法用{printer}打印，我怎么帮助客户？",
            "打印机离线的处理流程是什么？",
            "{printer}的打印任务一直卡在队列里。",
            "办公室的{printer}打印机对我的笔记本没反应了。",
            "我怎么让{name}的打印机重新上线？",
        ],
    },
    Intent {
        name: "sales_quote",
        en: "1. Ask for the product, quantity and delivery date. 2. Check stock and the volume discount tier. 3. Prepare a written quote valid for 14 days. 4. Email the quote and schedule a follow-up call.",
        zh: "1. 询问产品、数量和交货日期。2. 查询库存和批量折扣档位。3. 制作有效期14天的书面报价。4. 通过邮件发送报价并预约跟进电话。",
        q_en: [
            "Can I get a quote for {qty} units of the {product}?",
            "What is your price for {qty} units of the {product}?",
            "Our company {company} wants pricing for a bulk order.",
            "Please send a quotation for {qty} pieces.",
            "A business customer asks for a price quote. What do I do?",
            "{company} wants a quote for {qty} units. What are the steps?",
            "What is the procedure for preparing a sales quote?",
            "Do you offer a discount if we buy {qty} units of the {product}?",
            "We plan to order {qty} of the {product} next month, what would that cost?",
            "How do I put together a proposal for {company}?",
        ],
        q_zh: [
            "{qty}件{product}能给个报价吗？",
            "{qty}件{product}的价格是多少？",
            "我们公司{company}想了解批量订购的价格。",
            "请发一份{qty}件的报价单。",
            "企业客户要报价，我该怎么做？",
            "{company}要{qty}件的报价，步骤是什么？",
            "制作销售报价的流程是什么？",
            "如果买{qty}件{product}，有折扣吗？",
            "我们下个月打算订{qty}件{product}，大概多少钱？",
            "我怎么为{company}准备一份报价方案？",
        ],
    },
    Intent {
        name: "coupon_not_working",
        en: "1. Ask for the coupon code and the cart items. 2. Check the code's expiry date and minimum spend. 3. If the code is valid, apply the discount manually. 4. If it has expired, explain why and offer current promotions.",
        zh: "1. 询问优惠码和购物车商品。2. 检查优惠码的有效期和最低消费要求。3. 如果优惠码有效，手动应用折扣。4. 如果已过期，说明原因并介绍当前优惠活动。",
        q_en: [
            "My coupon code {coupon} is not working.",
            "The discount code {coupon} says invalid at checkout.",
            "Why didn't my coupon apply to the {product}?",
            "I tried {coupon} but the price didn't change.",
            "A customer's coupon code won't apply. What do I do?",
            "{name} says the code {coupon} is rejected. What are the steps?",
            "What is the procedure when a discount code fails?",
            "The promo code {coupon} gives me an error.",
            "Checkout ignores my voucher {coupon}, can you help?",
            "How do I deal with {name}'s broken promo code?",
        ],
        q_zh: [
            "我的优惠码{coupon}用不了。",
            "结账时提示折扣码{coupon}无效。",
            "为什么买{product}时优惠券没有生效？",
            "我用了{coupon}，但价格没变。",
            "客户的优惠码用不了，我该怎么做？",
            "{name}说优惠码{coupon}被拒绝了，步骤是什么？",
            "折扣码无法使用时的处理流程是什么？",
            "促销码{coupon}一直报错。",
            "结账时我的代金券{coupon}没被算进去，能帮忙吗？",
            "{name}的促销码失效了，我该怎么处理？",
        ],
    },
    Intent {
        name: "warranty_claim",
        en: "1. Verify the product serial number and purchase date. 2. Confirm the product is within the one-year warranty. 3. Ask for a photo or video of the fault. 4. Approve a free repair or replacement and send a shipping label.",
        zh: "1. 核实产品序列号和购买日期。2. 确认产品在一年保修期内。3. 请客户提供故障照片或视频。4. 批准免费维修或更换并发送寄件标签。",
        q_en: [
            "My {product} stopped working and it is still under warranty.",
            "How do I make a warranty claim for my {product}?",
            "The {product} with serial number {serial} is broken.",
            "Is my {product} covered by the warranty?",
            "A customer wants to file a warranty claim. What are the steps?",
            "{name} says the {product} broke after {months} months. How do I handle it?",
            "What is the procedure for a warranty claim?",
            "Can I get my {product} repaired for free under warranty?",
            "The {product} I bought {months} months ago has a fault, serial {serial}.",
            "How should I process the warranty request from {name}?",
        ],
        q_zh: [
            "我的{product}坏了，还在保修期内。",
            "{product}怎么申请保修？",
            "序列号为{serial}的{product}坏了。",
            "我的{product}在保修范围内吗？",
            "客户想申请保修，步骤是什么？",
            "{name}说{product}用了{months}个月就坏了，怎么处理？",
            "保修申请的流程是什么？",
            "我的{product}能免费保修吗？",
            "我{months}个月前买的{product}出故障了，序列号是{serial}。",
            "我应该怎么处理{name}的保修申请？",
        ],
    },
    Intent {
        name: "onboarding",
        en: "1. Welcome the customer and confirm their account details. 2. Schedule a 30-minute setup call. 3. Send the getting-started guide and training videos. 4. Assign an account manager. 5. Check in with the customer after one week.",
        zh: "1. 欢迎客户并确认账户信息。2. 预约30分钟的设置通话。3. 发送入门指南和培训视频。4. 指派客户经理。5. 一周后回访客户。",
        q_en: [
            "We just signed up for the {plan} plan. How do we get started?",
            "{company} is a new customer. What is the onboarding process?",
            "I'm new here. Can someone help me set up my account?",
            "How do I onboard a new customer on the {plan} plan?",
            "A new customer just joined. What are the onboarding steps?",
            "{name} from {company} just signed the contract. What do I do next?",
            "What is the procedure for welcoming a new customer?",
            "Our team at {company} needs help getting started with your service.",
            "We bought {plan} yesterday and don't know where to begin.",
            "What should I do first for the new account {company}?",
        ],
        q_zh: [
            "我们刚开通了{plan}，怎么开始使用？",
            "{company}是新客户，入门流程是什么？",
            "我是新用户，有人能帮我设置账户吗？",
            "怎么给{plan}的新客户做入门引导？",
            "刚来了一位新客户，入门引导的步骤是什么？",
            "{company}的{name}刚签了合同，接下来我该做什么？",
            "欢迎新客户的流程是什么？",
            "{company}的团队需要帮助来开始使用你们的服务。",
            "我们昨天买了{plan}，不知道从哪里开始。",
            "对于新账户{company}，我首先应该做什么？",
        ],
    },
    Intent {
        name: "damaged_delivery",
        en: "1. Apologise and ask for the order number. 2. Ask for photos of the damaged item and the package. 3. Ship a free replacement or issue a full refund, as the customer prefers. 4. Report the damage to the carrier.",
        zh: "1. 致歉并询问订单号。2. 请客户提供受损商品和包装的照片。3. 按客户意愿免费补发或全额退款。4. 向承运商报告损坏情况。",
        q_en: [
            "My {product} arrived broken.",
            "The package for order {order} was crushed and the item is damaged.",
            "I received a damaged {product}. What can you do?",
            "The box was wet and the {product} inside is ruined.",
            "A customer received a damaged item. What are the steps?",
            "{name} says order {order} arrived damaged. How do I handle it?",
            "What is the procedure for a damaged delivery?",
            "The {product} in order {order} has a big crack.",
            "When I opened the parcel the {product} was smashed.",
            "How do I help {name} with a delivery that came in pieces?",
        ],
        q_zh: [
            "我的{product}到货时是坏的。",
            "订单{order}的包裹被压坏了，商品也损坏了。",
            "我收到的{product}是坏的，怎么办？",
            "箱子湿了，里面的{product}也坏了。",
            "客户收到了损坏的商品，步骤是什么？",
            "{name}说订单{order}到货时已损坏，怎么处理？",
            "配送损坏的处理流程是什么？",
            "订单{order}里的{product}有一条大裂缝。",
            "我打开包裹时{product}已经碎了。",
            "{name}收到的货摔坏了，我该怎么帮助客户？",
        ],
    },
];

const SOP_PREFIX_EN: &[&str] = &[
    "",
    "Hi. ",
    "Hello. ",
    "Hi there. ",
    "Good morning. ",
    "Good afternoon. ",
];
const SOP_SUFFIX_EN: &[&str] = &[
    "",
    " Thanks.",
    " Thank you.",
    " Please help.",
    " Can you help?",
];
const SOP_PREFIX_ZH: &[&str] = &["", "你好，", "您好，", "你好。", "您好。", "早上好，"];
const SOP_SUFFIX_ZH: &[&str] = &["", "谢谢。", "谢谢！", "请帮帮忙。", "麻烦尽快处理。"];

/// A value from a listed slot pool; train draws never use the last [`HELD_OUT_VALUES`].
fn pick_listed(rng: &mut ChaCha8Rng, list: &[&str], eval: bool) -> String {
    let len = if eval {
        list.len()
    } else {
        list.len().saturating_sub(HELD_OUT_VALUES).max(1)
    };
    list[rng.random_range(0..len)].to_owned()
}

fn sop_slot(rng: &mut ChaCha8Rng, lang: Lang, eval: bool, slot: &str) -> String {
    let en = lang == Lang::En;
    let list: &[&str] = match slot {
        "order" => return format!("#{}", rng.random_range(100_000..=999_999u32)),
        "card" => return rng.random_range(1000..=9999u32).to_string(),
        "serial" => return format!("SN{}", rng.random_range(100_000..=999_999u32)),
        "printer" => return format!("LX-{}", rng.random_range(100..=999u32)),
        "router" => return format!("WR-{}", rng.random_range(100..=999u32)),
        "qty" => return rng.random_range(10..=500u32).to_string(),
        "days" => return rng.random_range(2..=14u32).to_string(),
        "months" => return rng.random_range(2..=11u32).to_string(),
        "amount" if en => return format!("${}", rng.random_range(5..=500u32)),
        "amount" => return format!("{}元", rng.random_range(5..=500u32)),
        "email" => {
            let user = pick_listed(
                rng,
                &[
                    "amy.lee",
                    "tom88",
                    "jwong",
                    "sara.k",
                    "mike.chen",
                    "lucy_w",
                    "dan.park",
                    "li.na",
                    "omar.b",
                    "nina.p",
                ],
                eval,
            );
            return format!("{user}{}@example.com", rng.random_range(1..=99u32));
        }
        "street" => {
            let number = rng.random_range(1..=200u32);
            return if en {
                let street = pick_listed(
                    rng,
                    &[
                        "Oak", "Maple", "Pine", "Cedar", "Elm", "Lake", "Birch", "Willow",
                    ],
                    eval,
                );
                format!("{number} {street} Street")
            } else {
                let road = pick_listed(
                    rng,
                    &[
                        "幸福路",
                        "人民路",
                        "和平路",
                        "解放路",
                        "中山路",
                        "建设路",
                        "文化路",
                        "花园路",
                    ],
                    eval,
                );
                format!("{road}{number}号")
            };
        }
        "product" if en => &[
            "wireless headphones",
            "coffee maker",
            "running shoes",
            "laptop stand",
            "smart watch",
            "desk lamp",
            "backpack",
            "blender",
            "phone case",
            "bluetooth speaker",
            "electric kettle",
            "yoga mat",
        ],
        "product" => &[
            "无线耳机",
            "咖啡机",
            "跑鞋",
            "笔记本支架",
            "智能手表",
            "台灯",
            "双肩包",
            "榨汁机",
            "手机壳",
            "蓝牙音箱",
            "电热水壶",
            "瑜伽垫",
        ],
        "plan" if en => &[
            "Basic",
            "Standard",
            "Pro",
            "Premium",
            "Family",
            "Business",
            "Team",
            "Enterprise",
        ],
        "plan" => &[
            "基础版",
            "标准版",
            "专业版",
            "高级版",
            "家庭版",
            "商务版",
            "团队版",
            "企业版",
        ],
        "name" if en => &[
            "Ms. Chen",
            "Mr. Smith",
            "Mrs. Patel",
            "Mr. Garcia",
            "Ms. Kim",
            "Mr. Brown",
            "Ms. Novak",
            "Mr. Ali",
            "Ms. Rossi",
            "Mr. Okafor",
        ],
        "name" => &[
            "王女士",
            "李先生",
            "张女士",
            "刘先生",
            "陈女士",
            "杨先生",
            "赵女士",
            "黄先生",
            "周女士",
            "吴先生",
        ],
        "coupon" => &[
            "SAVE10",
            "WELCOME15",
            "SPRING20",
            "VIP25",
            "FREESHIP",
            "HOLIDAY30",
            "NEWYEAR12",
            "FLASH50",
            "SUMMER40",
            "AUTUMN35",
        ],
        "app" if en => &[
            "mobile app",
            "desktop app",
            "tablet app",
            "web app",
            "shopping app",
            "banking app",
            "smart TV app",
            "watch app",
        ],
        "app" => &[
            "手机应用",
            "电脑客户端",
            "平板应用",
            "网页版",
            "购物应用",
            "银行应用",
            "电视应用",
            "手表应用",
        ],
        "device" if en => &[
            "iPhone",
            "Android phone",
            "Pixel phone",
            "Galaxy phone",
            "Xiaomi phone",
            "Huawei phone",
            "Motorola phone",
            "OnePlus phone",
        ],
        "device" => &[
            "iPhone",
            "安卓手机",
            "小米手机",
            "华为手机",
            "三星手机",
            "Pixel手机",
            "OPPO手机",
            "vivo手机",
        ],
        "month" if en => &[
            "January",
            "February",
            "March",
            "April",
            "May",
            "June",
            "July",
            "August",
            "September",
            "October",
            "November",
            "December",
        ],
        "month" => &[
            "一月",
            "二月",
            "三月",
            "四月",
            "五月",
            "六月",
            "七月",
            "八月",
            "九月",
            "十月",
            "十一月",
            "十二月",
        ],
        "company" if en => &[
            "Blue River Ltd",
            "Green Leaf Foods",
            "Star Travel",
            "North Peak Tech",
            "Sunrise Clinic",
            "Golden Gate Hotel",
            "Silver Line Media",
            "Red Maple School",
        ],
        "company" => &[
            "蓝河科技",
            "绿叶食品",
            "星辰旅行",
            "北峰科技",
            "朝阳诊所",
            "金门酒店",
            "银线传媒",
            "红枫学校",
        ],
        "colour" if en => &[
            "black", "white", "blue", "red", "green", "grey", "pink", "navy",
        ],
        "colour" => &[
            "黑色",
            "白色",
            "蓝色",
            "红色",
            "绿色",
            "灰色",
            "粉色",
            "藏青色",
        ],
        "size" => &["S", "M", "L", "XL", "38", "40", "42", "XXL", "44"],
        _ => return format!("{{{slot}}}"),
    };
    pick_listed(rng, list, eval)
}

fn sop_example(
    rng: &mut ChaCha8Rng,
    lang: Lang,
    eval: bool,
    intents: Option<&[usize]>,
) -> (usize, Example) {
    let index = match intents {
        Some(list) if !list.is_empty() => list[rng.random_range(0..list.len())],
        _ => rng.random_range(0..INTENTS.len()),
    };
    let intent = &INTENTS[index];
    let range = if eval {
        SOP_TRAIN_TEMPLATES..SOP_TEMPLATES
    } else {
        0..SOP_TRAIN_TEMPLATES
    };
    let template = intent.questions(lang)[rng.random_range(range)];
    let body = fill(template, |slot| sop_slot(rng, lang, eval, slot));
    let (prefixes, suffixes) = match lang {
        Lang::En => (SOP_PREFIX_EN, SOP_SUFFIX_EN),
        Lang::Zh => (SOP_PREFIX_ZH, SOP_SUFFIX_ZH),
    };
    let prefix = choose(rng, prefixes);
    let suffix = choose(rng, suffixes);
    let example = Example {
        prompt: format!("{prefix}{body}{suffix}"),
        answer: intent.answer(lang).to_owned(),
        domain: Domain::Sop,
        lang,
    };
    (index, example)
}

fn sop_items(seed: u64, n: usize, eval: bool) -> Vec<(usize, Example)> {
    let salt = if eval { SALT_SOP_EVAL } else { SALT_SOP_TRAIN };
    let mut rng = rng_for(seed, salt);
    collect_distinct(
        n,
        &mut rng,
        |(_, ex): &(usize, Example)| ex.prompt.as_str(),
        |rng, lang| Some(sop_example(rng, lang, eval, None)),
    )
}

fn sop_area_items(seed: u64, n: usize, eval: bool, area: SopArea) -> Vec<Example> {
    let salt = if eval { SALT_SOP_EVAL } else { SALT_SOP_TRAIN };
    // A distinct stream per area, so areas do not repeat each other's draws.
    let mut rng = rng_for(seed ^ ((area as u64 + 1) << 56), salt);
    let intents: Vec<usize> = INTENTS
        .iter()
        .enumerate()
        .filter(|(_, i)| SopArea::of_intent(i.name) == area)
        .map(|(k, _)| k)
        .collect();
    collect_distinct(
        n,
        &mut rng,
        |(_, ex): &(usize, Example)| ex.prompt.as_str(),
        |rng, lang| Some(sop_example(rng, lang, eval, Some(&intents))),
    )
    .into_iter()
    .map(|(_, ex)| ex)
    .collect()
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------------
// General questions (prompts only: the foundation answers them itself)
// ---------------------------------------------------------------------------------------------

const SALT_GENERAL_QUESTIONS: u64 = 0x6771_7565_7374_6e00;

/// `(template, slot list)`: `{}` is replaced by one entry of the list.
const GENERAL_QUESTION_TEMPLATES: &[(&str, &[&str])] = &[
    (
        "What is {}?",
        &[
            "photosynthesis",
            "a volcano",
            "democracy",
            "gravity",
            "an atom",
            "a rainbow",
            "inflation in economics",
            "a haiku",
            "the water cycle",
            "a black hole",
            "a noun",
            "a prime number",
            "the immune system",
            "a glacier",
            "an eclipse",
            "friction",
        ],
    ),
    (
        "Explain {} in simple words.",
        &[
            "how bees make honey",
            "why the sea is salty",
            "how a bicycle stays upright",
            "what clouds are made of",
            "how vaccines work",
            "why leaves change colour",
            "how magnets work",
            "what an election is",
            "how bread rises",
            "why we sleep",
        ],
    ),
    (
        "Give me three tips for {}.",
        &[
            "studying for an exam",
            "sleeping better",
            "saving money",
            "learning to cook",
            "keeping a plant alive",
            "running a first 5 km",
            "writing a clear email",
            "staying focused at work",
            "travelling light",
            "making new friends",
        ],
    ),
    (
        "Who was {}?",
        &[
            "Marie Curie",
            "Leonardo da Vinci",
            "Isaac Newton",
            "Cleopatra",
            "Confucius",
            "Mahatma Gandhi",
            "Ada Lovelace",
            "Galileo Galilei",
            "William Shakespeare",
            "Nelson Mandela",
        ],
    ),
    (
        "Write a short poem about {}.",
        &[
            "the autumn wind",
            "a cup of tea",
            "the night sky",
            "an old friend",
            "the ocean",
            "a rainy morning",
            "a cat asleep",
            "the first snow",
        ],
    ),
    (
        "What is the difference between {}?",
        &[
            "weather and climate",
            "a virus and a bacterium",
            "speed and velocity",
            "a lake and a pond",
            "an alligator and a crocodile",
            "baking and roasting",
            "a poem and a song",
            "a comet and an asteroid",
        ],
    ),
    (
        "How do I {}?",
        &[
            "boil an egg",
            "tie a tie",
            "make a paper plane",
            "plant tomatoes",
            "start journaling",
            "fold a shirt neatly",
            "make a cup of green tea",
            "remember names better",
            "stretch after a run",
        ],
    ),
    (
        "Why do {}?",
        &[
            "cats purr",
            "birds migrate",
            "onions make us cry",
            "stars twinkle",
            "we have seasons",
            "ice cubes float",
            "people yawn",
            "dogs wag their tails",
        ],
    ),
    (
        "Tell me a fun fact about {}.",
        &[
            "octopuses",
            "the Moon",
            "honey",
            "penguins",
            "the human heart",
            "Mount Everest",
            "elephants",
            "the Sahara desert",
            "bananas",
        ],
    ),
    (
        "Summarise the story of {} in two sentences.",
        &[
            "Cinderella",
            "Romeo and Juliet",
            "the tortoise and the hare",
            "Little Red Riding Hood",
            "Robinson Crusoe",
        ],
    ),
    (
        "Can you suggest {}?",
        &[
            "a name for a goldfish",
            "a healthy breakfast",
            "a board game for four players",
            "a gift for a teacher",
            "a weekend hobby",
            "a title for a travel blog",
        ],
    ),
    (
        "Is it true that {}?",
        &[
            "goldfish only remember three seconds",
            "lightning never strikes twice",
            "we use only ten percent of our brain",
            "bats are blind",
            "carrots help you see",
        ],
    ),
];

/// General questions for the foundation to answer itself (the deferral head's in-domain
/// text for "stay with the foundation"), drawn from hand-written templates and slots that
/// share no item with the eval files; the same seed gives the same list.
pub fn general_questions(seed: u64, n: usize) -> Vec<String> {
    let mut rng = rng_for(seed, SALT_GENERAL_QUESTIONS);
    let mut all: Vec<String> = GENERAL_QUESTION_TEMPLATES
        .iter()
        .flat_map(|(t, slots)| slots.iter().map(move |s| t.replace("{}", s)))
        .collect();
    for i in (1..all.len()).rev() {
        let j = rng.random_range(0..=i);
        all.swap(i, j);
    }
    all.truncate(n.min(MAX_ITEMS));
    all
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn has_cjk(s: &str) -> bool {
        s.chars().any(|c| ('\u{4e00}'..='\u{9fff}').contains(&c))
    }

    fn check_lang(lang: Lang, text: &str) {
        match lang {
            Lang::En => assert!(!has_cjk(text), "English text with CJK: {text}"),
            Lang::Zh => assert!(has_cjk(text), "Chinese text without CJK: {text}"),
        }
    }

    fn assert_balanced(langs: impl Iterator<Item = Lang>) {
        let (mut en, mut zh) = (0usize, 0usize);
        for l in langs {
            match l {
                Lang::En => en += 1,
                Lang::Zh => zh += 1,
            }
        }
        assert!(en.abs_diff(zh) <= 1, "unbalanced: {en} en vs {zh} zh");
    }

    fn assert_distinct<T: std::hash::Hash + Eq + std::fmt::Debug>(items: &[T]) {
        let set: HashSet<&T> = items.iter().collect();
        assert_eq!(set.len(), items.len(), "duplicates found");
    }

    fn en_words(s: &str) -> usize {
        s.split_whitespace().count()
    }

    #[test]
    fn determinism() {
        assert_eq!(general_text(7, 500), general_text(7, 500));
        assert_eq!(reasoning_train(7, 500), reasoning_train(7, 500));
        assert_eq!(reasoning_eval(7, 500), reasoning_eval(7, 500));
        assert_eq!(sop_train(7, 500), sop_train(7, 500));
        assert_eq!(sop_eval(7, 500), sop_eval(7, 500));
        assert_ne!(general_text(7, 50), general_text(8, 50));
        assert_ne!(reasoning_train(7, 50), reasoning_train(8, 50));
        assert_ne!(sop_train(7, 50), sop_train(8, 50));
        // A shorter request is a prefix of a longer one.
        assert_eq!(reasoning_train(3, 100)[..], reasoning_train(3, 300)[..100]);
    }

    #[test]
    fn general_text_shape() {
        let text = general_text(1, 20_000);
        assert_eq!(text.len(), 20_000);
        assert_distinct(&text);
        let mut zh = 0;
        for (i, s) in text.iter().enumerate() {
            assert!(!s.contains('{') && !s.contains('}'), "unfilled slot: {s}");
            let lang = if i % 2 == 0 { Lang::En } else { Lang::Zh };
            check_lang(lang, s);
            if lang == Lang::En {
                let w = en_words(s);
                assert!((5..=25).contains(&w), "{w} words: {s}");
            } else {
                zh += 1;
                let c = s.chars().count();
                assert!((6..=50).contains(&c), "{c} chars: {s}");
            }
        }
        assert_eq!(zh, 10_000);
    }

    #[test]
    fn reasoning_answers_are_correct() {
        for eval in [false, true] {
            let items = reasoning_items(11, 5000, eval);
            assert_eq!(items.len(), 5000);
            assert_distinct(
                &items
                    .iter()
                    .map(|(_, e)| (&e.prompt, &e.answer))
                    .collect::<Vec<_>>(),
            );
            assert_balanced(items.iter().map(|(_, e)| e.lang));
            for (p, ex) in &items {
                assert_eq!(p.is_eval(), eval);
                assert_eq!(ex.domain, Domain::Reasoning);
                check_lang(ex.lang, &ex.prompt);
                assert!(
                    !ex.prompt.contains('{') && !ex.prompt.contains('}'),
                    "{}",
                    ex.prompt
                );
                let got = extract_final_answer(&ex.answer);
                assert_eq!(got.as_deref(), Some(p.solution(ex.lang).as_str()), "{ex:?}");
                assert!(en_words(&ex.answer) <= 25, "{}", ex.answer);
                match ex.lang {
                    Lang::En => assert!(
                        ex.answer
                            .ends_with(&format!("The answer is {}.", got.unwrap()))
                    ),
                    Lang::Zh => assert!(ex.answer.ends_with(&format!("答案是{}。", got.unwrap()))),
                }
                // Independently re-check the worked equation `x op y = z`.
                let first = ex.answer.split(['.', '。']).next().unwrap();
                let tokens: Vec<&str> = first.split_whitespace().collect();
                if tokens.len() == 5 && tokens[3] == "=" {
                    let x: u32 = tokens[0].parse().unwrap();
                    let y: u32 = tokens[2].parse().unwrap();
                    let z: u32 = tokens[4].parse().unwrap();
                    let expect = match tokens[1] {
                        "+" => x + y,
                        "-" => x - y,
                        "×" => x * y,
                        other => panic!("operator {other}"),
                    };
                    assert_eq!(z, expect, "{}", ex.answer);
                    assert_eq!(got_number(&ex.answer), z);
                }
            }
        }
    }

    fn got_number(answer: &str) -> u32 {
        extract_final_answer(answer).unwrap().parse().unwrap()
    }

    #[test]
    fn reasoning_split_is_disjoint() {
        let mut eval_keys = HashSet::new();
        let mut eval_prompts = HashSet::new();
        for seed in 0..4 {
            for (p, ex) in reasoning_items(seed, 5000, true) {
                eval_keys.insert(p.key());
                eval_prompts.insert(ex.prompt);
            }
        }
        for seed in 0..6 {
            for (p, ex) in reasoning_items(seed, 5000, false) {
                assert!(
                    !eval_keys.contains(&p.key()),
                    "train problem {p:?} is in eval"
                );
                assert!(
                    !eval_prompts.contains(&ex.prompt),
                    "train prompt in eval: {}",
                    ex.prompt
                );
            }
        }
        // The split covers roughly one problem in five.
        let held = (1..=99u32)
            .flat_map(|a| (1..=99u32).map(move |b| Problem::Bare(Math { op: Op::Add, a, b })))
            .filter(|p| p.is_eval())
            .count();
        assert!(
            (1500..2500).contains(&held),
            "{held} of 9801 additions held out"
        );
    }

    #[test]
    fn sop_areas_partition_the_intents() {
        let mut counts = std::collections::HashMap::new();
        for i in INTENTS {
            *counts.entry(SopArea::of_intent(i.name)).or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 3, "{counts:?}");
        assert!(counts.values().all(|&c| c >= 5), "{counts:?}");
        for area in SopArea::ALL {
            let answers: HashSet<&str> = INTENTS
                .iter()
                .filter(|i| SopArea::of_intent(i.name) == area)
                .flat_map(|i| [i.en, i.zh])
                .collect();
            let train = sop_train_area(3, 400, area);
            let eval = sop_eval_area(3, 100, area);
            assert_eq!(train.len(), 400);
            assert_eq!(eval.len(), 100);
            for ex in train.iter().chain(&eval) {
                assert_eq!(ex.domain, Domain::Sop);
                assert!(answers.contains(ex.answer.as_str()), "{area:?}: {ex:?}");
            }
            let train_prompts: HashSet<&str> = train.iter().map(|e| e.prompt.as_str()).collect();
            assert!(
                eval.iter()
                    .all(|e| !train_prompts.contains(e.prompt.as_str()))
            );
            assert_eq!(sop_train_area(3, 400, area), train, "deterministic");
        }
        assert_eq!(SopArea::TechSupport.model_name(), "sft-tech-support");
    }

    #[test]
    fn reasoning_covers_every_kind() {
        let items = reasoning_items(5, 3000, false);
        let has = |f: fn(&Problem) -> bool| items.iter().any(|(p, _)| f(p));
        assert!(has(|p| matches!(
            p,
            Problem::Bare(Math { op: Op::Add, .. })
        )));
        assert!(has(|p| matches!(
            p,
            Problem::Bare(Math { op: Op::Sub, .. })
        )));
        assert!(has(|p| matches!(
            p,
            Problem::Bare(Math { op: Op::Mul, .. })
        )));
        assert!(has(|p| matches!(p, Problem::Word(_))));
        assert!(has(|p| matches!(p, Problem::Compare { .. })));
        assert!(has(|p| matches!(p, Problem::Convert { .. })));
        assert!(has(|p| matches!(p, Problem::Logic { .. })));
    }

    #[test]
    fn sop_shape_and_split() {
        let mut eval_prompts = HashSet::new();
        let canonical: HashSet<&str> = INTENTS.iter().flat_map(|i| [i.en, i.zh]).collect();
        assert_eq!(canonical.len(), 2 * INTENTS.len());
        for seed in 0..3 {
            let items = sop_items(seed, 5000, true);
            assert_eq!(items.len(), 5000);
            assert_balanced(items.iter().map(|(_, e)| e.lang));
            for (i, ex) in items {
                assert!(canonical.contains(ex.answer.as_str()));
                assert_eq!(ex.answer, INTENTS[i].answer(ex.lang));
                eval_prompts.insert(ex.prompt);
            }
        }
        for seed in 0..6 {
            let items = sop_items(seed, 5000, false);
            assert_eq!(items.len(), 5000);
            assert_distinct(
                &items
                    .iter()
                    .map(|(_, e)| (&e.prompt, &e.answer))
                    .collect::<Vec<_>>(),
            );
            assert_balanced(items.iter().map(|(_, e)| e.lang));
            for (i, ex) in &items {
                assert_eq!(ex.domain, Domain::Sop);
                assert_eq!(ex.answer, INTENTS[*i].answer(ex.lang));
                check_lang(ex.lang, &ex.prompt);
                assert!(
                    !ex.prompt.contains('{') && !ex.prompt.contains('}'),
                    "{}",
                    ex.prompt
                );
                assert!(
                    !eval_prompts.contains(&ex.prompt),
                    "eval prompt in train: {}",
                    ex.prompt
                );
            }
        }
        // Every intent, language and train phrasing is reachable.
        let items = sop_train(2, 20_000);
        assert_eq!(items.len(), 20_000);
        for intent in INTENTS {
            for lang in [Lang::En, Lang::Zh] {
                assert!(
                    items.iter().any(|e| e.answer == intent.answer(lang)),
                    "{} unused",
                    intent.name
                );
            }
        }
        assert_eq!(sop_eval(2, 20_000).len(), 20_000);
    }

    #[test]
    fn sop_templates_and_procedures() {
        assert!(INTENTS.len() >= 20);
        let mut all = HashSet::new();
        for intent in INTENTS {
            for lang in [Lang::En, Lang::Zh] {
                for t in intent.questions(lang) {
                    assert!(all.insert(*t), "template used twice: {t}");
                    check_lang(lang, t);
                }
                let answer = intent.answer(lang);
                check_lang(lang, answer);
                let steps = (1..=9)
                    .take_while(|k| answer.contains(&format!("{k}. ")))
                    .count();
                assert!((3..=5).contains(&steps), "{}: {steps} steps", intent.name);
                assert!(answer.starts_with("1. "));
                if lang == Lang::En {
                    let w = en_words(answer);
                    assert!((25..=60).contains(&w), "{}: {w} words", intent.name);
                }
            }
        }
        assert_eq!(all.len(), INTENTS.len() * 2 * SOP_TEMPLATES);
    }

    #[test]
    fn bounded_for_huge_requests() {
        for len in [
            general_text(3, 1_000_000).len(),
            reasoning_train(3, 1_000_000).len(),
            reasoning_eval(3, 1_000_000).len(),
            sop_train(3, 1_000_000).len(),
            sop_eval(3, 1_000_000).len(),
        ] {
            assert!((20_000..=MAX_ITEMS).contains(&len), "{len}");
        }
        assert!(general_text(3, 0).is_empty());
    }
}
