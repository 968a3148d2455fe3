//! Synthetic, bilingual (English and Simplified Chinese) labelled queries for
//! training and evaluating the query classifier.
//!
//! Two classes are generated:
//!
//! * label 0, **reasoning** (everything the foundation model answers):
//!   arithmetic, word problems, percentages, rates, logic puzzles, analysis and
//!   trade-offs, Fermi estimates, planning, unit conversions, probability,
//!   combinatorics, proofs, finance maths and algorithm reasoning; and general
//!   requests: world facts, science explained, word meanings, history, nature,
//!   everyday advice, cooking, travel, chit-chat, writing and editing,
//!   translation, programming how-to, opinions, and general questions that use
//!   support words ("what is a refund in accounting?").
//! * label 1, **sop**: standard operating procedures for customer service,
//!   sales and technical support (returns, refunds, exchanges, password
//!   resets, lockouts, 2FA, escalation, billing, subscriptions, onboarding,
//!   shipping, warranty, quotes and discounts, demos and renewals,
//!   troubleshooting, complaints, account changes).
//!
//! Each class has many intents, and each intent has several English and
//! several Chinese sentence templates in different registers (polite, terse,
//! frustrated customer, agent asking how to handle a case, imperative, short
//! lowercase forms). Slots such as `{product}`, `{order}` or `{pct}` are
//! filled from fixed lists or number ranges, and a light styling pass adds
//! greetings, sign-offs, lowercase and dropped punctuation to both classes
//! alike, so that surface style carries no label signal. Hard cases are
//! deliberate: reasoning questions about refunds, orders or passwords, and
//! procedure questions full of order numbers and amounts.
//!
//! Everything is drawn from one [`ChaCha8Rng`] seeded with the caller's seed
//! and the lists are consumed in a fixed order (a hash set is only used for
//! membership, never iterated), so the same seed always yields the same
//! vector, on every platform, including WebAssembly. Generation per class is
//! bounded by [`MAX_ATTEMPTS_PER_CLASS`], so asking for more queries than the
//! template space can supply returns fewer items instead of looping forever.

use std::collections::HashSet;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::data::LabeledQuery;

/// Label of the reasoning class.
pub const LABEL_REASONING: usize = 0;
/// Label of the standard-operating-procedure class.
pub const LABEL_SOP: usize = 1;

/// Upper bound on generation attempts for one class. Each attempt yields one
/// candidate; duplicates are discarded. This caps the output of a huge
/// request (and its run time) instead of looping until the space runs dry.
pub const MAX_ATTEMPTS_PER_CLASS: usize = 20_000;

/// One intent: a set of English and a set of Chinese templates that all ask
/// for the same kind of thing.
struct Intent {
    en: &'static [&'static str],
    zh: &'static [&'static str],
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Lang {
    En,
    Zh,
}

// ---------------------------------------------------------------------------
// Reasoning (label 0)
// ---------------------------------------------------------------------------

const REASONING: &[Intent] = &[
    // Plain arithmetic.
    Intent {
        en: &[
            "What is {x} times {b} plus {big}?",
            "calc {big} / {a}",
            "Compute {x} * {y} - {big}.",
            "How much is {big} divided by {a}, rounded to two decimal places?",
            "Add up {x}, {y}, {big} and {big2} for me.",
            "What's {big} minus {x}, then multiplied by {a}?",
            "Is {x} squared bigger than {big}? Show the working.",
        ],
        zh: &[
            "{x}乘以{b}再加上{big}等于多少？",
            "计算 {big} ÷ {a}，保留两位小数。",
            "{x} × {y} − {big} 是多少",
            "把{x}、{y}、{big}和{big2}加起来是多少？",
            "{big}减去{x}再乘以{a}，结果是多少？",
            "{x}的平方比{big}大吗？写出计算过程",
        ],
    },
    // Word problems, often about money and orders (hard cases).
    Intent {
        en: &[
            "If a refund of ${amt} is split evenly among {a} people, how much does each get?",
            "A shop sells {a} notebooks for ${x}. How much would {n} notebooks cost?",
            "I bought {a} items at ${amt} each and got {pct}% off the total. What did I pay?",
            "Order #{order} has {a} boxes weighing {x} kg in total. What is the average weight per box?",
            "If a customer is charged twice for a ${amt} order and refunded once, how much did they pay in the end?",
            "{name} has ${big} and spends a third on rent and a quarter of the rest on food. How much is left?",
            "A bakery sells {big} cookies a day at ${c} each and pays ${x} a day in costs. What is its weekly profit?",
        ],
        zh: &[
            "一笔{amt}元的退款平均分给{a}个人，每人能拿到多少？",
            "商店{a}本笔记本卖{x}元，买{n}本要多少钱？",
            "买了{a}件商品，每件{amt}元，打{zhe}折后一共要付多少？",
            "订单{order}里有{a}箱货，总重{x}公斤，平均每箱多重？",
            "客户一笔{amt}元的订单被扣了两次款，又退回一次，他实际付了多少钱？",
            "{zname}有{big}元，三分之一交房租，剩下的四分之一买菜，还剩多少？",
            "面包店每天卖{big}块饼干，每块{c}元，每天成本{x}元，一周利润多少？",
        ],
    },
    // Percentages and growth.
    Intent {
        en: &[
            "Sales went from {big} to {big2} units. What's the percentage change?",
            "If prices rise {pct}% a year, what will a ${x} item cost after {a} years?",
            "What percentage of {big} is {x}?",
            "A price is cut by {pct}% and then raised by {pct2}%. Is it higher or lower than the original?",
            "Our churn is {pct}% per month. How many of {big} customers remain after {a} months?",
            "percent increase from {x} to {big}?",
            "A {pct}% tip on a ${amt} bill, split {a} ways: how much does each person add?",
        ],
        zh: &[
            "销量从{big}涨到{big2}，增长率是多少？",
            "每年涨价{pct}%，{x}元的东西{a}年后多少钱？",
            "{x}占{big}的百分之几？",
            "先降价{pct}%再涨价{pct2}%，最后比原价高还是低？",
            "月流失率{pct}%，{big}个客户{a}个月后还剩多少？",
            "从{x}涨到{big}，涨了百分之多少",
        ],
    },
    // Rates, work and travel time.
    Intent {
        en: &[
            "A train leaves {city} at noon going {x} km/h. How long does it take to cover {big} km?",
            "Two workers paint a fence alone in {a} and {b} hours. How long do they take together?",
            "If {a} machines make {big} parts in {b} hours, how many parts do {c} machines make in {hours} hours?",
            "A car uses {a} liters per 100 km. How much fuel does a {big} km trip need?",
            "I walk at {a} km/h and my friend cycles at {x} km/h from {big} km away. When do we meet?",
            "A tank fills in {a} hours and drains in {b} hours. With both open, how long until it is full?",
        ],
        zh: &[
            "火车中午从{zcity}出发，时速{x}公里，走{big}公里要多久？",
            "甲单独刷完篱笆要{a}小时，乙要{b}小时，两人合作要多久？",
            "{a}台机器{b}小时生产{big}个零件，{c}台机器{hours}小时能生产多少个？",
            "百公里油耗{a}升，开{big}公里需要多少油？",
            "我每小时走{a}公里，朋友从{big}公里外骑车过来，时速{x}公里，多久相遇？",
            "水池进水管{a}小时注满，出水管{b}小时放空，同时打开多久注满？",
        ],
    },
    // Logic puzzles.
    Intent {
        en: &[
            "All bloops are razzies and all razzies are lazzies. Are all bloops lazzies?",
            "{name} is taller than {name2}, and {name2} is taller than {name3}. Who is the shortest?",
            "If it rains, the game is cancelled. The game was not cancelled. What can we conclude?",
            "Three boxes are all labelled wrong: apples, oranges, mixed. You may draw one fruit from one box. How do you fix every label?",
            "A knight always tells the truth and a knave always lies. {name} says 'we are both knaves'. What is {name}?",
            "Is 'if {name} lives in {city}, then {name} has a passport' equivalent to its converse? Explain.",
            "solve this riddle: a man looks at a portrait and says 'brothers and sisters I have none, but that man's father is my father's son'. who is in the portrait",
        ],
        zh: &[
            "所有的A都是B，有些B是C，能推出有些A是C吗？",
            "{zname}比{zname2}高，{zname2}比{zname3}高，谁最矮？",
            "如果下雨比赛就取消，比赛没取消，能得出什么结论？",
            "三个盒子的标签全贴错了，只能从一个盒子里拿一个水果，怎么把标签全改对？",
            "骑士总说真话，无赖总说假话。{zname}说“我们俩都是无赖”，{zname}是哪种人？",
            "5个海盗分100枚金币，怎么一步步推理出最优分配？",
            "逻辑题：{zname}说{zname2}在说谎，{zname2}说{zname3}在说谎，{zname3}说他们俩都在说谎，谁说了真话",
        ],
    },
    // Analysis: compare options, pros and cons.
    Intent {
        en: &[
            "Compare renting versus buying a home in {city}: which factors matter most?",
            "What are the pros and cons of {opt} versus {opt2} for a {a}-person team?",
            "Should a startup pick a monolith or microservices? Walk me through the trade-offs.",
            "Which is the better deal: {pct}% off or buy {a} get one free?",
            "Weigh the pros and cons of moving our warehouse from {city} to {city2}.",
            "{opt} or {opt2}? Argue both sides and pick one.",
            "Is it smarter to pay off a {r}% loan early or invest the money? Reason it through.",
        ],
        zh: &[
            "在{zcity}租房和买房哪个更划算？需要考虑哪些因素？",
            "{zopt}和{zopt2}各有什么优缺点？帮我对比一下",
            "小团队该用单体架构还是微服务？分析一下利弊",
            "减{pct}%和买{a}送一，哪个更划算？",
            "把仓库从{zcity}搬到{zcity2}，利弊分别是什么？",
            "提前还清利率{r}%的贷款，还是拿钱去投资？帮我推理一下",
        ],
    },
    // Fermi estimation.
    Intent {
        en: &[
            "How many piano tuners are there in {city}? Give an estimate.",
            "Roughly how many cups of coffee are sold in {city} each day?",
            "Estimate how many golf balls fit in a school bus.",
            "Back-of-envelope: how much storage would {big} million photos need?",
            "Estimate how many parcels a courier in {city} delivers in a year.",
            "fermi estimate: number of windows in {city}",
            "About how many words does a person speak in {a} years? Show your assumptions.",
        ],
        zh: &[
            "估算一下{zcity}有多少家奶茶店",
            "{zcity}每天大概卖出多少杯咖啡？粗略估算一下",
            "一辆校车里能装多少个高尔夫球？",
            "粗略估计：{big}万张照片需要多少存储空间？",
            "估算{zcity}一个快递员一年送多少件快递",
            "一个人{a}年里大概说多少个字？写出你的假设",
        ],
    },
    // Planning and scheduling.
    Intent {
        en: &[
            "Plan a {a}-day trip to {city} on a budget of ${k}.",
            "I have {x} hours free this week and tasks that take {a}, {b} and {c} hours. How should I schedule them?",
            "Help me build a monthly budget on a ${k} salary.",
            "Make a study plan that covers {n} chapters in {b} weeks.",
            "Draft a {a}-week project plan for launching a website with {b} people.",
            "How should I split {hours} hours of practice across {a} subjects to maximize my exam score?",
            "I need to visit {city}, {city2} and {city3} in {a} days with the least travel time. What order makes sense and why?",
        ],
        zh: &[
            "帮我规划一个{a}天的{zcity}旅行，预算{k}元",
            "这周有{x}个小时，三个任务分别要{a}、{b}、{c}小时，怎么安排最合理？",
            "月薪{k}元，帮我做一个月度预算",
            "{b}周要复习完{n}章，怎么制定学习计划？",
            "{b}个人做网站上线项目，帮我排一个{a}周的计划",
            "{a}天要去{zcity}、{zcity2}和{zcity3}，按什么顺序走最省时间？",
        ],
    },
    // Unit conversions.
    Intent {
        en: &[
            "Convert {big} km to miles.",
            "How many ounces are in {a} pounds?",
            "{x} degrees Fahrenheit in Celsius?",
            "What is {big} ml in cups?",
            "How many seconds are there in {a} days?",
            "convert {x} mph to km/h",
            "A recipe needs {big} grams of flour. How many cups is that, roughly?",
        ],
        zh: &[
            "{big}公里等于多少英里？",
            "{x}华氏度是多少摄氏度？",
            "{a}磅等于多少千克？",
            "{a}天一共有多少秒？",
            "{big}平方米是多少亩？",
            "{x}英寸换算成厘米是多少",
        ],
    },
    // Probability and statistics.
    Intent {
        en: &[
            "What's the probability of rolling two sixes with two dice?",
            "If I flip a coin {n} times, what is the chance of exactly {b} heads?",
            "A bag has {a} red and {b} blue balls. Drawing 2 without replacement, what's the probability both are red?",
            "What's the expected value of a bet that pays ${x} with probability {pct}%?",
            "Find the mean and median of {a}, {b}, {c}, {x} and {y}.",
            "If {pct}% of orders are defective, what's the chance that none of {a} orders is defective?",
            "In a room of {n} people, how likely is it that two share a birthday?",
        ],
        zh: &[
            "同时掷两个骰子，都是6的概率是多少？",
            "抛硬币{n}次，恰好{b}次正面的概率是多少？",
            "袋子里有{a}个红球{b}个蓝球，不放回抽两个，都是红球的概率？",
            "{a}、{b}、{c}、{x}、{y}的平均数和中位数是多少？",
            "次品率{pct}%，{a}个订单全部合格的概率是多少？",
            "{n}个人里至少两人同一天生日的概率有多大？",
        ],
    },
    // Proofs and algebra.
    Intent {
        en: &[
            "Prove that the square root of 2 is irrational.",
            "Show that the sum of two odd numbers is always even.",
            "Prove by induction that 1 + 2 + ... + n = n(n+1)/2.",
            "Why is there no largest prime number?",
            "Solve for x: {a}x + {x} = {big}.",
            "Find the derivative of x^{a} + {b}x.",
            "Is {big} divisible by {a}? Explain without a calculator.",
        ],
        zh: &[
            "证明根号2是无理数",
            "证明两个奇数之和一定是偶数",
            "用数学归纳法证明 1+2+…+n = n(n+1)/2",
            "为什么不存在最大的质数？",
            "解方程：{a}x + {x} = {big}",
            "求 x^{a} + {b}x 的导数",
            "{big}能被{a}整除吗？说明理由",
        ],
    },
    // Code and algorithm reasoning.
    Intent {
        en: &[
            "What's the time complexity of binary search over {big} elements, and why?",
            "How many comparisons does bubble sort make on {a} items in the worst case?",
            "Explain why quicksort is O(n log n) on average but O(n^2) in the worst case.",
            "Design an algorithm to find two numbers in a list that sum to {big}.",
            "In {lang}, is a hash map or a sorted array better for {big} lookups per second? Reason it out.",
            "Why does a recursive fibonacci in {lang} get so slow for n = {x}?",
            "what does `total = 0; for i in range({a}): total += i` leave in total",
        ],
        zh: &[
            "二分查找{big}个元素最多要比较几次？为什么？",
            "冒泡排序对{a}个元素最坏情况下要比较多少次？",
            "为什么快速排序平均是O(n log n)，最坏是O(n²)？",
            "设计一个算法，找出数组里和为{big}的两个数",
            "用{lang}写斐波那契，递归和动态规划哪个更快？为什么？",
            "哈希表和有序数组，每秒{big}次查询用哪个更好？推理一下",
        ],
    },
    // Finance maths (money, but reasoning).
    Intent {
        en: &[
            "If I invest ${k} at {r}% a year compounded annually, how much will I have after {a} years?",
            "Which costs less overall: a ${k} loan at {r}% over {a} years or at {r2}% over {b} years?",
            "We spent ${k} on ads and gained {big} customers worth ${x} each. What's the ROI?",
            "How long does money take to double at {r}% interest?",
            "Fixed costs are ${k}, the price is ${x} and the unit cost is ${c}. How many units to break even?",
            "A subscription costs ${x} a month or ${big} a year. Which is cheaper over {a} years, and by how much?",
        ],
        zh: &[
            "{k}元按年利率{r}%复利存{a}年，最后有多少钱？",
            "广告花了{k}元，带来{big}个客户，每个客户价值{x}元，ROI是多少？",
            "年利率{r}%的话，钱翻倍需要多少年？",
            "固定成本{k}元，售价{x}元，单位成本{c}元，卖多少件才能保本？",
            "贷款{k}元，{a}年还清，年利率{r}%，每月要还多少？",
            "会员月费{x}元，年费{big}元，用{a}年哪种更划算？差多少？",
        ],
    },
    // Data and trend interpretation.
    Intent {
        en: &[
            "Monthly signups were {x}, {y}, {big} and {big2}. Is growth accelerating?",
            "Our support tickets doubled but satisfaction stayed flat. What might explain that?",
            "What can we conclude if {pct}% of users churn after the first week?",
            "How should I interpret a correlation of 0.{x} between ad spend and sales?",
            "Average delivery time went from {a} to {b} days. Reason about the likely effect on repeat orders.",
            "Revenue is up {pct}% but profit is down. What could cause that?",
            "Why might a store's sales drop {pct}% in {month} even though foot traffic went up?",
        ],
        zh: &[
            "每月注册量分别是{x}、{y}、{big}、{big2}，增长在加速吗？",
            "客服工单翻倍了但满意度没变，可能是什么原因？分析一下",
            "{pct}%的用户第一周就流失了，能得出什么结论？",
            "广告投入和销量的相关系数是0.{x}，该怎么解读？",
            "平均配送时间从{a}天变成{b}天，对复购率可能有什么影响？推理一下",
            "收入涨了{pct}%，利润却下降了，可能是什么原因？",
        ],
    },
    // Combinatorics and counting.
    Intent {
        en: &[
            "How many ways can {a} people sit around a round table?",
            "In how many ways can I choose {b} toppings from {n}?",
            "How many handshakes happen if {n} people each shake hands once?",
            "How many 4-digit PINs have no repeated digits?",
            "In a round robin with {n} teams, how many matches are played in total?",
            "How many different passwords of length {a} can be made from lowercase letters and digits?",
        ],
        zh: &[
            "{a}个人围着圆桌坐，有多少种坐法？",
            "从{n}种配料里选{b}种，有多少种选法？",
            "{n}个人两两握手一次，一共握几次？",
            "不含重复数字的4位密码一共有多少个？",
            "{n}支球队打单循环赛，一共要比多少场？",
            "长度为{a}、由小写字母和数字组成的密码有多少种？",
        ],
    },
    // Support-operations maths (reads like SOP, is reasoning).
    Intent {
        en: &[
            "Our refund queue has {big} tickets and each agent clears {x} a day. How many agents do we need to clear it in {a} days?",
            "We get {big} password-reset requests a month and {pct}% could be automated. How many fewer tickets is that per week?",
            "An extended warranty costs ${x}, {pct}% of units fail within a year and a repair costs ${big}. Is the warranty worth it?",
            "Order #{order} has {a} items at ${amt} each plus {pct}% tax. What's the total?",
            "Shipping is ${a} per kg plus a ${x} flat fee. For a {b} kg parcel, is that cheaper than a ${y} flat rate?",
            "If {pct}% of {big} callers ask to escalate, and a supervisor handles {a} calls an hour, how many supervisor hours do we need?",
        ],
        zh: &[
            "退款工单积压了{big}个，每个客服一天处理{x}个，{a}天清完需要几个人？",
            "每月有{big}个重置密码的请求，{pct}%可以自动化，每周能少多少工单？",
            "延保{x}元，一年内故障率{pct}%，维修费{big}元，买延保划算吗？",
            "订单{order}有{a}件商品，每件{amt}元，税率{pct}%，总价是多少？",
            "运费每公斤{a}元加{x}元起步价，寄{b}公斤的包裹和{y}元一口价比哪个便宜？",
            "{big}个来电里有{pct}%要求升级，主管每小时处理{a}个，需要多少主管工时？",
        ],
    },
    // Longer, multi-clause reasoning prompts.
    Intent {
        en: &[
            "I run a small bakery that sells {n} cakes a day at ${x} each. If ingredient costs rise by {pct}% and I want to keep the same profit margin, how should I adjust the price, and what assumptions am I making?",
            "Our team of {a} engineers ships about {b} features a month. If we hire {c} more but onboarding halves a new hire's output for {a} weeks, when do we actually come out ahead? Think it through step by step.",
            "My commute is {x} minutes by car and costs ${c} a day, or {big} minutes by train at ${a} a day. Over a {n}-day month, which is better if I value my time at ${y} an hour?",
        ],
        zh: &[
            "我开了一家小面包店，每天卖{n}个蛋糕，每个{x}元。如果原料成本上涨{pct}%，又想保持原来的利润率，售价应该怎么调？请说明你的假设。",
            "我们团队{a}个工程师每月上线{b}个功能，再招{c}个人，但新人前{a}周效率只有一半，多久以后整体产出才会真正提高？一步步推理。",
            "开车通勤{x}分钟，每天{c}元；坐地铁{big}分钟，每天{a}元。如果我的时间每小时值{y}元，一个月{n}天哪种更划算？",
        ],
    },
];

// ---------------------------------------------------------------------------
// General requests (label 0): everything else the foundation should answer
// ---------------------------------------------------------------------------

/// General knowledge, definitions, advice, chit-chat, writing, translation and
/// how-to questions: no company procedure is asked for, so the foundation model
/// answers them. They share label 0 with reasoning (the seed's two classes);
/// several are hard cases that use support words in a general sense.
const GENERAL: &[Intent] = &[
    // World facts.
    Intent {
        en: &[
            "What is the capital of {country}?",
            "what language do people speak in {country}",
            "Which currency is used in {country}?",
            "Where exactly is {country} on the map?",
            "Tell me three interesting facts about {country}.",
            "What is {city} famous for?",
            "What continent is {country} in?",
        ],
        zh: &[
            "{zcountry}的首都是哪里？",
            "{zcountry}人说什么语言",
            "{zcountry}用的是什么货币？",
            "给我讲三个关于{zcountry}的有趣知识",
            "{zcity}有什么出名的？",
            "{zcountry}在哪个洲？",
        ],
    },
    // Science, explained.
    Intent {
        en: &[
            "Why is the sky blue?",
            "How does {topic} work?",
            "Explain {topic} like I'm ten years old.",
            "Can you give me a simple explanation of {topic}?",
            "what causes {topic}",
            "What is the difference between weather and climate?",
            "Why do we have seasons?",
            "How do vaccines train the immune system?",
        ],
        zh: &[
            "天空为什么是蓝色的？",
            "{ztopic}是怎么回事？",
            "用小学生能听懂的话解释一下{ztopic}",
            "简单介绍一下{ztopic}的原理",
            "为什么会有四季？",
            "天气和气候有什么区别？",
        ],
    },
    // Word meanings and language.
    Intent {
        en: &[
            "What does the word \"{word}\" mean?",
            "define {word}",
            "Give me a synonym for {word}.",
            "What's the opposite of {word}?",
            "Use \"{word}\" in a sentence, please.",
            "Is it \"affect\" or \"effect\" in this sentence: the rain will {word} the game?",
            "How do you pronounce {word}?",
        ],
        zh: &[
            "“{zword}”是什么意思？",
            "{zword}的近义词有哪些",
            "“{zword}”的反义词是什么？",
            "用“{zword}”造个句子",
            "英语单词 {word} 是什么意思？",
            "成语“{zidiom}”怎么理解？",
        ],
    },
    // History and people.
    Intent {
        en: &[
            "Who was {person}?",
            "What is {person} best known for?",
            "When did the {event} happen?",
            "Give me a short summary of the {event}.",
            "why did the {event} matter",
            "Who invented the telephone?",
        ],
        zh: &[
            "{zperson}是谁？",
            "{zperson}有哪些主要成就？",
            "{zevent}是什么时候发生的？",
            "简单讲讲{zevent}",
            "{zevent}为什么重要",
        ],
    },
    // Animals and nature.
    Intent {
        en: &[
            "How long do {animal} usually live?",
            "What do {animal} eat?",
            "Are {animal} dangerous to humans?",
            "fun facts about {animal}",
            "Why do leaves change colour in autumn?",
            "How many legs does an insect have?",
        ],
        zh: &[
            "{zanimal}一般能活多少年？",
            "{zanimal}吃什么？",
            "{zanimal}对人有危险吗",
            "讲几个关于{zanimal}的冷知识",
            "秋天树叶为什么会变黄？",
        ],
    },
    // Health and everyday advice.
    Intent {
        en: &[
            "How do I politely turn down an invitation from a {relative}?",
            "How do I apologize to a friend after an argument?",
            "What should I write in a thank-you card for my {relative}?",
            "how do I make friends after moving to a new city",
            "How can I sleep better at night?",
            "Any tips for staying focused while studying?",
            "how much water should I drink a day",
            "What's a good way to start running as a beginner?",
            "How do I stop procrastinating?",
            "What are some healthy breakfast ideas?",
            "I feel stressed before exams. What can I do?",
        ],
        zh: &[
            "怎么礼貌地拒绝{zrelative}的邀请？",
            "和朋友吵架了，该怎么道歉",
            "搬到新城市，怎么交到朋友？",
            "晚上总是睡不着，怎么办？",
            "学习的时候怎么才能更专注？",
            "一天应该喝多少水",
            "新手怎么开始跑步？",
            "怎么改掉拖延症？",
            "考试前很紧张，有什么办法缓解吗？",
        ],
    },
    // Cooking and home.
    Intent {
        en: &[
            "How do I make {dish}?",
            "Give me a simple recipe for {dish}.",
            "How long should I boil an egg for a soft yolk?",
            "what can I cook with rice, eggs and spinach",
            "How do I get a red wine stain out of a carpet?",
            "What's the best way to store fresh herbs?",
        ],
        zh: &[
            "{zdish}怎么做？",
            "给我一个简单的{zdish}做法",
            "鸡蛋煮几分钟是溏心的？",
            "冰箱里只有鸡蛋和西红柿，能做什么菜",
            "衣服上的油渍怎么洗掉？",
        ],
    },
    // Travel and recommendations.
    Intent {
        en: &[
            "I loved {book}. What should I read next?",
            "Recommend a few novels for someone who enjoys {genre}.",
            "What should I see on a weekend in {city}?",
            "When is the best time of year to visit {country}?",
            "Can you recommend a good book about {topic}?",
            "suggest some movies like Inception",
            "What are fun things to do on a rainy day?",
            "Plan a relaxed two-day trip to {city} for me.",
        ],
        zh: &[
            "我很喜欢《{zbook}》，还有类似的书推荐吗？",
            "推荐几部{zgenre}电影",
            "周末去{zcity}玩，有什么推荐的景点？",
            "什么季节去{zcountry}旅游最好？",
            "推荐几本关于{ztopic}的书",
            "下雨天在家可以做些什么？",
            "帮我安排一个{zcity}两日游",
        ],
    },
    // Chit-chat and greetings.
    Intent {
        en: &[
            "hi",
            "Hello! How are you today?",
            "good morning :)",
            "Tell me a joke.",
            "thanks, that was helpful",
            "Who are you?",
            "What can you do?",
            "I'm bored, talk to me.",
            "what's your favourite colour?",
        ],
        zh: &[
            "你好",
            "你好呀，今天过得怎么样？",
            "早上好",
            "给我讲个笑话",
            "谢谢你，很有帮助",
            "你是谁？",
            "你能做什么？",
            "好无聊啊，陪我聊聊天",
        ],
    },
    // Writing and editing.
    Intent {
        en: &[
            "Write a short poem about {subject}.",
            "write a haiku about {subject}",
            "Can you write a two-sentence story about {subject}?",
            "Make this sentence sound more polite: send me the file now.",
            "Help me write a birthday message for my {relative}.",
            "Write a short email to my manager asking for {day} off.",
            "Summarize this in one sentence: the meeting moved to {day} because the room was booked.",
            "Fix the grammar: me and him goes to school every days.",
        ],
        zh: &[
            "写一首关于{zsubject}的短诗",
            "帮我写一段关于{zsubject}的小故事",
            "帮我给{zrelative}写一段生日祝福",
            "帮我写一封邮件，向领导请{zday}的假",
            "把这句话改得更礼貌一些：赶紧把文件发给我",
            "帮我润色一下这段话：今天天气很好我们去公园玩了很开心",
        ],
    },
    // Translation.
    Intent {
        en: &[
            "Translate \"{phrase}\" into {tongue}.",
            "How do you say \"{phrase}\" in {tongue}?",
            "what is \"{zphrase}\" in English",
            "Translate this to Chinese: {phrase}",
            "Is \"{phrase}\" correct English?",
        ],
        zh: &[
            "“{zphrase}”用英语怎么说？",
            "把“{phrase}”翻译成中文",
            "“{zphrase}”翻译成{ztongue}是什么？",
            "这句英文什么意思：{phrase}",
            "帮我把这句话翻译成英文：{zphrase}",
        ],
    },
    // Programming how-to.
    Intent {
        en: &[
            "How do I reverse a list in {lang}?",
            "What is a closure in {lang}?",
            "how to read a file line by line in {lang}",
            "What's the difference between a process and a thread?",
            "Explain what a REST API is.",
            "Write a {lang} function that checks whether a string is a palindrome.",
        ],
        zh: &[
            "{lang}里怎么反转一个列表？",
            "{lang}的闭包是什么？",
            "用{lang}怎么逐行读取文件",
            "进程和线程有什么区别？",
            "什么是REST API？",
        ],
    },
    // General questions in support vocabulary (hard cases): no procedure is asked for.
    Intent {
        en: &[
            "What is a refund in accounting terms?",
            "How do hackers crack passwords?",
            "Explain how two-factor authentication works in general.",
            "Write a funny poem about a package that got lost in the mail.",
            "What is the history of customer service as a job?",
            "Why do companies offer warranties at all?",
            "What makes a password strong, in theory?",
            "How does online shopping delivery work behind the scenes?",
        ],
        zh: &[
            "会计上的退款是什么意思？",
            "黑客是怎么破解密码的？",
            "双重认证的原理是什么？",
            "写一首关于快递寄丢了的搞笑小诗",
            "为什么商家要提供保修？",
            "一个密码怎样才算安全，原理是什么？",
        ],
    },
    // Opinions and comparisons.
    Intent {
        en: &[
            "Which is better as a pet, a cat or a dog?",
            "What do you think about {topic}?",
            "Is it better to read books on paper or on a screen?",
            "tea or coffee?",
            "Should I learn {tongue} or {tongue2} first?",
        ],
        zh: &[
            "养猫好还是养狗好？",
            "你怎么看{ztopic}？",
            "纸质书和电子书哪个好？",
            "先学{ztongue}还是{ztongue2}？",
            "茶和咖啡你更喜欢哪个",
        ],
    },
    // Geography and measurement facts.
    Intent {
        en: &[
            "How tall is Mount Everest?",
            "How far is the Moon from the Earth?",
            "What is the longest river in the world?",
            "How many continents are there?",
            "what is the largest ocean",
            "How many days are there in a leap year?",
        ],
        zh: &[
            "珠穆朗玛峰有多高？",
            "月球离地球有多远？",
            "世界上最长的河是哪条？",
            "地球上有几大洲？",
            "最大的海洋是哪个",
            "闰年有多少天？",
        ],
    },
];

// ---------------------------------------------------------------------------
// Standard operating procedures (label 1)
// ---------------------------------------------------------------------------

const SOP: &[Intent] = &[
    // Returns.
    Intent {
        en: &[
            "How do I return my {product}?",
            "What's the return policy for a {product} bought in {month}?",
            "I want to send back the {product}, it's not what I expected.",
            "Walk me through processing a return for order #{order}.",
            "return label for order {order}?",
            "A customer wants to return a {product} after {n} days. What's our procedure?",
            "Can I return an opened {product}?",
        ],
        zh: &[
            "{zproduct}怎么退货？",
            "我的{zproduct}想退货，流程是什么",
            "顾客买了{n}天的{zproduct}要退，按流程该怎么处理？",
            "订单{order}的退货标签在哪里打印？",
            "拆封了的{zproduct}还能退吗？",
            "退货流程",
            "我的 {zproduct} 退货要寄到哪里？",
        ],
    },
    // Refunds.
    Intent {
        en: &[
            "When will I get my refund for order #{order}?",
            "refund status?",
            "I returned the {product} {a} weeks ago and still no refund. This is ridiculous.",
            "How do I issue a partial refund of ${amt} in the admin console?",
            "A customer asks why the refund went to the original card instead of store credit. What do I tell them?",
            "What's the approval process for refunds over ${big}?",
            "Please refund the ${amt} you charged me for the {product}.",
        ],
        zh: &[
            "订单{order}的退款什么时候到账？",
            "退款进度怎么查",
            "退货{a}周了钱还没退回来，怎么回事？！",
            "后台怎么给客户部分退款{amt}元？",
            "超过{big}元的退款需要谁审批？流程是什么",
            "客户问为什么退款退到了原卡上，我该怎么回复？",
            "{zproduct}的{amt}元什么时候退给我",
        ],
    },
    // Exchanges.
    Intent {
        en: &[
            "Can I exchange my {product} for a different size?",
            "How do I swap a {color} {product} for a {color2} one?",
            "Exchange process for a defective {product}?",
            "A customer wants to exchange a gift without a receipt. How should I handle it?",
            "i got the wrong size, how do i exchange it",
            "How many days do I have to exchange an item from order #{order}?",
        ],
        zh: &[
            "{zproduct}尺码不对能换吗？",
            "想把{zcolor}的{zproduct}换成{zcolor2}的，怎么操作？",
            "没有小票的礼品能换货吗？该怎么处理",
            "换货一般要几天？",
            "收到的{zproduct}有质量问题，怎么申请换新？",
            "订单{order}买了{a}天了，还能换货吗",
        ],
    },
    // Password reset.
    Intent {
        en: &[
            "How do I reset my password?",
            "I forgot my password and the reset email never arrives.",
            "Walk me through resetting a customer's password from the admin panel.",
            "password reset link expired, what now?",
            "What should I say when a caller wants a password reset but can't verify their identity?",
            "How do I change my password in {app}?",
        ],
        zh: &[
            "密码忘了怎么办",
            "重置密码的邮件一直收不到",
            "怎么在后台帮客户重置密码？",
            "重置链接过期了怎么办？",
            "客户打电话要重置密码，但身份验证不通过，该怎么处理？",
            "{zapp}登录密码怎么改",
        ],
    },
    // Account lockout.
    Intent {
        en: &[
            "My account is locked after {a} failed attempts. How do I unlock it?",
            "account locked, help",
            "What's the procedure to unlock a customer account flagged for suspicious activity?",
            "Why was I locked out of {app}?",
            "How long does an account lockout last before it resets?",
            "Unlock the account for {name}, they're locked out again.",
        ],
        zh: &[
            "输错{a}次密码账号被锁了，怎么解锁？",
            "账户被锁定了",
            "客户账号因为异常登录被冻结，解冻流程是什么？",
            "为什么我登录{zapp}提示账号已锁定",
            "账号锁定多久会自动解除？",
            "帮{zname}解锁一下账号，又被锁了",
        ],
    },
    // Two-factor authentication.
    Intent {
        en: &[
            "I lost my phone and can't get my 2FA codes.",
            "How do I disable two-factor authentication for a user who changed phone numbers?",
            "authenticator codes not working",
            "The SMS verification code never arrives. What should I do?",
            "What's the process for resetting MFA on an enterprise account?",
            "I got a new {device} and now two-factor login fails.",
        ],
        zh: &[
            "手机丢了收不到双重验证码怎么办",
            "客户换了手机号，怎么帮他关闭两步验证？",
            "验证码一直收不到",
            "身份验证器生成的动态码一直提示错误",
            "企业账号重置MFA的流程是什么？",
            "换了新{zdevice}，2FA登录不上了",
        ],
    },
    // Escalation.
    Intent {
        en: &[
            "When should I escalate a ticket to a supervisor?",
            "A customer is demanding to speak to a manager. What do I do?",
            "How do I escalate ticket #{ticket} to tier 2?",
            "I want to talk to your supervisor now.",
            "What's the escalation path for an outage affecting {big} users?",
            "escalation procedure for VIP complaints?",
        ],
        zh: &[
            "什么情况下要把工单升级给主管？",
            "客户一直要求找经理，我该怎么办？",
            "工单{ticket}怎么升级到二线？",
            "我要投诉，让你们主管来跟我说",
            "影响{big}个用户的故障，升级流程是什么？",
            "VIP客户投诉走什么升级流程",
        ],
    },
    // Billing disputes, double charges, invoices.
    Intent {
        en: &[
            "I need a VAT invoice for order #{order}. What details do you need from me?",
            "Invoice {inv} lists the wrong number of seats, please correct it and credit us.",
            "Can you reissue invoice {inv} with our new company address?",
            "I was charged twice for order #{order}.",
            "Why is there a ${amt} charge on my card that I don't recognize?",
            "How do I download the invoice for {month}?",
            "A customer disputes a ${amt} charge. What's the process?",
            "Can you send me a VAT invoice for my last payment?",
            "I need a copy of invoice {inv}.",
            "my bill went up ${a} this month without any notice, please explain",
        ],
        zh: &[
            "开增值税专用发票需要提供什么资料？",
            "订单{order}的发票抬头写错了，怎么重开",
            "发票{inv}上的金额不对，能帮忙更正吗？",
            "订单{order}被扣了两次钱",
            "信用卡上有一笔{amt}元的扣款，我不认识",
            "怎么下载{zmonth}的发票？",
            "客户对一笔{amt}元的扣费有异议，处理流程是什么？",
            "能帮我开一张增值税专用发票吗",
            "这个月账单莫名多了{a}元，怎么回事",
            "发票{inv}抬头开错了，怎么重开？",
        ],
    },
    // Subscriptions: cancel, upgrade, downgrade, pause.
    Intent {
        en: &[
            "How do I switch from the monthly to the yearly {plan} plan, and do I lose my remaining days?",
            "How do I cancel my subscription?",
            "I want to upgrade from {plan} to {plan2}.",
            "What happens to my data if I downgrade to the {plan} plan?",
            "cancel my plan please",
            "A customer wants to cancel mid-cycle. Do we prorate, and how do I process it?",
            "How do I pause my membership for {a} months?",
            "Turn off auto-renew on my {plan} subscription.",
        ],
        zh: &[
            "月度会员怎么升级成年度会员？剩下的天数还算吗",
            "怎么取消订阅？",
            "我想从{zplan}升级到{zplan2}",
            "降级到{zplan}以后数据会丢吗？",
            "客户月中要取消订阅，是否按比例退款？怎么操作",
            "会员可以暂停{a}个月吗",
            "取消自动续费",
            "帮我把{zplan}的自动续费关掉",
        ],
    },
    // Onboarding new customers.
    Intent {
        en: &[
            "What are the onboarding steps for a new enterprise customer?",
            "How do I set up a new customer account in the CRM?",
            "Send me the welcome checklist for new clients.",
            "We just signed {company}. What's the kickoff process?",
            "How do I add {a} users to a new team workspace?",
            "first steps after a customer buys the {plan} plan?",
        ],
        zh: &[
            "新客户开通账号的流程是什么？",
            "企业客户上线培训要做哪些步骤",
            "刚签约了{zcompany}，启动会按流程怎么安排？",
            "怎么给新团队批量添加{a}个用户？",
            "新客户欢迎邮件模板在哪",
            "客户买了{zplan}之后，开通步骤有哪些",
        ],
    },
    // Shipping, tracking and order changes.
    Intent {
        en: &[
            "Where is my order #{order}?",
            "tracking number for order {order}",
            "My package was supposed to arrive on {day} but it's still not here.",
            "Can I change the shipping address on order #{order}?",
            "How do I add an item to an order that hasn't shipped yet?",
            "Order #{order} arrived damaged, what do I do?",
            "The courier says delivered but I never got it.",
        ],
        zh: &[
            "订单{order}到哪了？",
            "怎么查物流",
            "说好{zday}到货，现在还没收到",
            "订单{order}还没发货，能改收货地址吗？",
            "快递显示已签收但我没收到",
            "订单{order}收到时外包装破损了，怎么处理？",
            "还没发货的订单能再加一件商品吗",
        ],
    },
    // Warranty claims.
    Intent {
        en: &[
            "How do I file a warranty claim for my {product}?",
            "Is my {product} still under warranty after {a} years?",
            "What documents does a customer need for a warranty repair?",
            "warranty claim for a cracked screen?",
            "Steps to process a warranty replacement for serial number {serial}.",
            "My {product} stopped working after {b} months. Is that covered?",
        ],
        zh: &[
            "{zproduct}怎么申请保修？",
            "买了{a}年的{zproduct}还在保修期吗？",
            "客户申请保修需要提供哪些材料？",
            "屏幕碎了保修管吗",
            "序列号{serial}的设备怎么走保修换新流程？",
            "{zproduct}用了{b}个月就坏了，能保修吗",
        ],
    },
    // Sales quotes, discounts and promotions.
    Intent {
        en: &[
            "Do you offer price protection if the {product} drops in price after I buy it?",
            "Is there a volume discount for {n} licenses of the {plan} plan?",
            "the {product} went on sale {a} days after I bought it, can I get the difference back?",
            "How do I prepare a quote for {n} seats on the {plan} plan?",
            "Can I offer a {pct}% discount to close a deal this quarter?",
            "What's the approval process for discounts above {pct}%?",
            "Is there a promo code for first-time buyers?",
            "what should I say when a prospect says we're too expensive",
            "The promo code SAVE{pct} isn't working at checkout.",
        ],
        zh: &[
            "买了{a}天就降价了，支持保价吗？",
            "一次买{n}个{zplan}账号有批量折扣吗",
            "{zproduct}刚买完就降价，差价能退吗？",
            "给客户报{n}个{zplan}席位，报价单怎么做？",
            "这个季度能给客户打{zhe}折吗？需要谁审批",
            "折扣超过{pct}%的审批流程是什么",
            "新用户有没有优惠码？",
            "客户嫌我们太贵，销售该怎么回应？",
            "优惠码SAVE{pct}结账时用不了",
        ],
    },
    // Demos and contract renewals.
    Intent {
        en: &[
            "How do I schedule a demo for a prospect?",
            "Book a product demo for {company} next {day}.",
            "{company}'s contract renews on {month} 1. What's the renewal procedure?",
            "A customer wants to renew but with fewer seats. How do I update the contract?",
            "What do I send a client {a} days before their renewal date?",
            "renewal checklist for enterprise accounts?",
        ],
        zh: &[
            "怎么给潜在客户预约产品演示？",
            "帮我约{zcompany}下{zday}的产品演示",
            "{zcompany}的合同{zmonth}到期，续约流程是什么？",
            "客户续约时要减少席位，合同怎么改？",
            "续约前{a}天要给客户发什么通知？",
            "企业客户续约清单",
        ],
    },
    // Network troubleshooting: router, Wi-Fi, VPN.
    Intent {
        en: &[
            "My internet keeps dropping. What should I try?",
            "How do I reboot the router properly?",
            "VPN won't connect from home.",
            "Walk me through troubleshooting a customer's Wi-Fi that drops every {a} minutes.",
            "What are the first-line steps when a user can't reach the VPN?",
            "no internet after the update, help",
            "The router light is blinking orange. What now?",
        ],
        zh: &[
            "家里网络总是断，该怎么排查？",
            "路由器怎么正确重启",
            "在家连不上公司VPN",
            "客户说WiFi每{a}分钟断一次，一线排查步骤是什么？",
            "更新之后上不了网了",
            "路由器灯一直闪橙色怎么办",
        ],
    },
    // Device and app troubleshooting.
    Intent {
        en: &[
            "My {product} won't charge and the light keeps blinking red.",
            "The app crashes every time I open it.",
            "My printer shows offline. How do I fix it?",
            "{app} keeps freezing on my {device}.",
            "What troubleshooting script should agents follow for a printer that won't print?",
            "error code {ecode} when syncing, what should I do?",
            "How do I clear the cache for {app}?",
            "Walk me through reinstalling {app} on a {device}.",
        ],
        zh: &[
            "买的{zproduct}充不进电，指示灯一直闪",
            "App一打开就闪退",
            "打印机显示脱机怎么办",
            "{zapp}在{zdevice}上老是卡死",
            "打印机不出纸，客服应该按什么步骤排查？",
            "同步时报错{ecode}怎么办？",
            "怎么清除{zapp}的缓存",
            "教我在{zdevice}上重新安装{zapp}",
        ],
    },
    // Complaint handling and what to say.
    Intent {
        en: &[
            "How should I respond to a customer who is angry about a late delivery?",
            "What's the script for apologizing after a service outage?",
            "This is the third time my order is late. I'm done with you guys.",
            "A customer left a 1-star review naming one of our agents. What's the procedure?",
            "How should I handle a complaint about rude staff at the {city} store?",
            "What should an agent say when they don't know the answer?",
        ],
        zh: &[
            "客户因为快递延误很生气，我该怎么回复？",
            "服务中断后给客户道歉的话术是什么？",
            "这已经是第{a}次延迟发货了，太过分了！",
            "客户投诉{zcity}门店店员态度差，该怎么处理？",
            "客服不知道答案时应该怎么跟客户说？",
            "差评处理流程",
        ],
    },
    // Account and profile changes, data requests.
    Intent {
        en: &[
            "How do I change the email on my account?",
            "Please delete my account and all my data.",
            "How do I process a GDPR data export request?",
            "update billing address",
            "How do I transfer account ownership to {name}?",
            "Add {name} as an admin on our {plan} workspace.",
        ],
        zh: &[
            "怎么修改账号绑定的邮箱？",
            "请注销我的账号并删除所有数据",
            "用户要求导出个人数据，怎么处理？",
            "怎么更新账单地址",
            "怎么把账号所有权转给{zname}？",
            "把{zname}设成我们{zplan}工作区的管理员",
        ],
    },
    // Longer, multi-clause procedure requests.
    Intent {
        en: &[
            "Hi, I ordered the {product} on {month} {date} (order #{order}). It arrived with a cracked screen even though the box looked fine, and I already contacted support twice. What exactly are the next steps to get a replacement?",
            "I'm a new agent. A customer on the {plan} plan says they were billed ${amt} after cancelling, they're upset and threatening a chargeback. What's the correct procedure, and what should I say to calm them down?",
            "Our office printer in {city} has been offline since {day}; we restarted it, checked the cable and reinstalled the driver on {a} laptops. What should the helpdesk try next before sending a technician?",
        ],
        zh: &[
            "你好，我{zmonth}{date}号买的{zproduct}（订单{order}）收到时屏幕就裂了，外箱是好的，我已经联系过两次客服了，请问换新的具体流程是什么？",
            "我是新来的客服，一个{zplan}客户说取消订阅后还被扣了{amt}元，情绪很激动，说要申请拒付。正确的处理流程是什么？我该怎么安抚他？",
            "{zcity}办公室的打印机从{zday}开始一直脱机，重启过、检查过网线，也在{a}台电脑上重装了驱动，送修前客服还应该按什么步骤排查？",
        ],
    },
];

// ---------------------------------------------------------------------------
// Slot values
// ---------------------------------------------------------------------------

const PRODUCTS: &[&str] = &[
    "iPhone 15",
    "laptop",
    "running shoes",
    "coffee maker",
    "Bluetooth speaker",
    "winter jacket",
    "air fryer",
    "smartwatch",
    "office chair",
    "4K monitor",
    "gaming headset",
    "robot vacuum",
    "backpack",
    "electric toothbrush",
    "tablet",
    "mechanical keyboard",
];
const ZH_PRODUCTS: &[&str] = &[
    "iPhone 15",
    "笔记本电脑",
    "跑鞋",
    "咖啡机",
    "蓝牙音箱",
    "羽绒服",
    "空气炸锅",
    "智能手表",
    "办公椅",
    "显示器",
    "AirPods",
    "扫地机器人",
    "双肩包",
    "电动牙刷",
    "平板",
    "机械键盘",
];
const NAMES: &[&str] = &[
    "Alice", "Bob", "Carlos", "Diana", "Emma", "Farid", "Grace", "Hiro", "Ivan", "Julia", "Kofi",
    "Liam", "Mei", "Noah", "Olivia", "Priya",
];
const ZH_NAMES: &[&str] = &[
    "小王", "小李", "张三", "李四", "王芳", "刘洋", "陈静", "赵磊", "孙丽", "周杰", "吴敏", "郑强",
];
const CITIES: &[&str] = &[
    "London",
    "Tokyo",
    "New York",
    "Berlin",
    "Shanghai",
    "Paris",
    "Toronto",
    "Sydney",
    "Chicago",
    "Singapore",
    "Madrid",
    "Seoul",
];
const ZH_CITIES: &[&str] = &[
    "北京", "上海", "广州", "深圳", "杭州", "成都", "南京", "武汉", "西安", "重庆", "苏州", "天津",
];
const PLANS: &[&str] = &[
    "Basic",
    "Standard",
    "Pro",
    "Premium",
    "Business",
    "Enterprise",
    "Starter",
    "Team",
];
const ZH_PLANS: &[&str] = &[
    "基础版",
    "标准版",
    "专业版",
    "高级版",
    "企业版",
    "团队版",
    "个人版",
    "旗舰版",
];
const APPS: &[&str] = &[
    "the mobile app",
    "Outlook",
    "Zoom",
    "Teams",
    "Slack",
    "our desktop client",
    "the web portal",
    "the Android app",
    "the iOS app",
    "Chrome",
];
const ZH_APPS: &[&str] = &[
    "App",
    "微信小程序",
    "客户端",
    "网页版",
    "安卓版App",
    "钉钉",
    "企业微信",
    "iOS版",
];
const DEVICES: &[&str] = &[
    "iPhone",
    "Android phone",
    "Windows laptop",
    "MacBook",
    "iPad",
    "work PC",
    "Chromebook",
    "Surface tablet",
];
const ZH_DEVICES: &[&str] = &[
    "安卓手机",
    "iPhone",
    "Windows电脑",
    "MacBook",
    "iPad",
    "公司电脑",
    "平板",
    "华为手机",
];
const COMPANIES: &[&str] = &[
    "Acme Corp",
    "Globex",
    "Initech",
    "Northwind",
    "Contoso",
    "Umbrella Retail",
    "Stark Logistics",
    "Wayne Foods",
    "Blue Harbor Bank",
    "Summit Health",
];
const ZH_COMPANIES: &[&str] = &[
    "星辰科技",
    "远航物流",
    "蓝海银行",
    "绿叶超市",
    "云端软件",
    "金山制造",
    "天和医疗",
    "宏达贸易",
    "博远教育",
    "鼎盛地产",
];
const MONTHS: &[&str] = &[
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
];
const ZH_MONTHS: &[&str] = &[
    "1月", "2月", "3月", "4月", "5月", "6月", "7月", "8月", "9月", "10月", "11月", "12月",
];
const DAYS: &[&str] = &[
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];
const ZH_DAYS: &[&str] = &["周一", "周二", "周三", "周四", "周五", "周六", "周日"];
const COLORS: &[&str] = &[
    "black", "white", "blue", "red", "green", "grey", "silver", "pink",
];
const ZH_COLORS: &[&str] = &[
    "黑色", "白色", "蓝色", "红色", "绿色", "灰色", "银色", "粉色",
];
const OPTIONS: &[&str] = &[
    "Python",
    "Go",
    "Rust",
    "Java",
    "PostgreSQL",
    "MongoDB",
    "Kubernetes",
    "serverless",
    "a four-day week",
    "fully remote work",
    "leasing laptops",
    "buying laptops",
];
const ZH_OPTIONS: &[&str] = &[
    "Python",
    "Go",
    "Java",
    "MySQL",
    "MongoDB",
    "远程办公",
    "坐班",
    "电动车",
    "燃油车",
    "自建机房",
    "上云",
    "外包",
    "自研",
];
const LANGS: &[&str] = &[
    "Python",
    "Rust",
    "Go",
    "Java",
    "C++",
    "JavaScript",
    "TypeScript",
];
const COUNTRIES: &[&str] = &[
    "France",
    "Japan",
    "Brazil",
    "Canada",
    "Egypt",
    "Australia",
    "India",
    "Kenya",
    "Mexico",
    "Norway",
    "Peru",
    "Vietnam",
    "Italy",
    "Argentina",
];
const ZH_COUNTRIES: &[&str] = &[
    "法国",
    "日本",
    "巴西",
    "加拿大",
    "埃及",
    "澳大利亚",
    "印度",
    "肯尼亚",
    "墨西哥",
    "挪威",
    "秘鲁",
    "越南",
    "意大利",
    "阿根廷",
];
const WORDS: &[&str] = &[
    "ubiquitous",
    "resilient",
    "ephemeral",
    "candid",
    "meticulous",
    "serendipity",
    "frugal",
    "ambiguous",
    "benevolent",
    "nostalgia",
    "pragmatic",
    "eloquent",
    "affect",
];
const ZH_WORDS: &[&str] = &[
    "坚持", "温柔", "谦虚", "敷衍", "淡定", "执着", "惊喜", "勤奋", "犹豫", "节俭", "乐观",
];
const ZH_IDIOMS: &[&str] = &[
    "画蛇添足",
    "守株待兔",
    "对牛弹琴",
    "亡羊补牢",
    "一举两得",
    "半途而废",
    "井底之蛙",
    "塞翁失马",
];
const TOPICS: &[&str] = &[
    "photosynthesis",
    "gravity",
    "black holes",
    "inflation",
    "the internet",
    "rainbows",
    "earthquakes",
    "electricity",
    "volcanoes",
    "the tides",
    "machine learning",
    "DNA",
    "climate change",
    "the stock market",
];
const ZH_TOPICS: &[&str] = &[
    "光合作用",
    "万有引力",
    "黑洞",
    "通货膨胀",
    "彩虹",
    "地震",
    "电",
    "火山",
    "潮汐",
    "人工智能",
    "DNA",
    "气候变化",
    "股市",
];
const PEOPLE: &[&str] = &[
    "Marie Curie",
    "Albert Einstein",
    "Leonardo da Vinci",
    "Nelson Mandela",
    "Ada Lovelace",
    "Confucius",
    "Isaac Newton",
    "Frida Kahlo",
    "Charles Darwin",
    "Cleopatra",
];
const ZH_PEOPLE: &[&str] = &[
    "李白",
    "孔子",
    "秦始皇",
    "居里夫人",
    "爱因斯坦",
    "苏轼",
    "郑和",
    "牛顿",
    "诸葛亮",
    "鲁迅",
];
const EVENTS: &[&str] = &[
    "French Revolution",
    "Moon landing",
    "fall of the Berlin Wall",
    "Industrial Revolution",
    "Renaissance",
    "Black Death",
    "first Olympic Games",
];
const ZH_EVENTS: &[&str] = &[
    "丝绸之路",
    "工业革命",
    "文艺复兴",
    "郑和下西洋",
    "登月",
    "柏林墙倒塌",
    "辛亥革命",
];
const ANIMALS: &[&str] = &[
    "elephants",
    "octopuses",
    "penguins",
    "cats",
    "honeybees",
    "dolphins",
    "owls",
    "giraffes",
    "sharks",
    "tortoises",
];
const ZH_ANIMALS: &[&str] = &[
    "大熊猫",
    "章鱼",
    "企鹅",
    "猫",
    "蜜蜂",
    "海豚",
    "猫头鹰",
    "长颈鹿",
    "鲨鱼",
    "乌龟",
];
const DISHES: &[&str] = &[
    "pancakes",
    "fried rice",
    "tomato soup",
    "guacamole",
    "banana bread",
    "a Caesar salad",
    "spaghetti carbonara",
    "scrambled eggs",
    "dumplings",
];
const ZH_DISHES: &[&str] = &[
    "番茄炒蛋",
    "红烧肉",
    "饺子",
    "蛋炒饭",
    "麻婆豆腐",
    "可乐鸡翅",
    "酸辣土豆丝",
    "葱油饼",
];
const SUBJECTS: &[&str] = &[
    "the ocean",
    "autumn leaves",
    "a rainy Monday",
    "my grandmother's kitchen",
    "the first snow",
    "a lazy cat",
    "city lights at night",
    "friendship",
    "the moon",
];
const ZH_SUBJECTS: &[&str] = &[
    "大海",
    "秋天",
    "月亮",
    "春雨",
    "故乡",
    "友情",
    "夏天的晚上",
    "一只懒猫",
    "第一场雪",
];
const RELATIVES: &[&str] = &[
    "mom",
    "dad",
    "sister",
    "brother",
    "best friend",
    "grandpa",
    "aunt",
];
const ZH_RELATIVES: &[&str] = &["妈妈", "爸爸", "姐姐", "弟弟", "好朋友", "爷爷", "老师"];
const PHRASES: &[&str] = &[
    "good morning",
    "where is the train station",
    "I would like a coffee, please",
    "I want to return this item",
    "nice to meet you",
    "how much does this cost",
    "see you tomorrow",
    "the weather is lovely today",
];
const ZH_PHRASES: &[&str] = &[
    "我想退货",
    "早上好",
    "火车站在哪里",
    "很高兴认识你",
    "这个多少钱",
    "明天见",
    "今天天气真好",
    "我爱你",
];
const TONGUES: &[&str] = &[
    "French", "Spanish", "Japanese", "German", "Italian", "Korean",
];
const ZH_TONGUES: &[&str] = &["法语", "西班牙语", "日语", "德语", "韩语", "英语"];
const BOOKS: &[&str] = &[
    "Pride and Prejudice",
    "Dune",
    "The Hobbit",
    "1984",
    "Harry Potter",
    "The Little Prince",
    "Sapiens",
    "To Kill a Mockingbird",
];
const ZH_BOOKS: &[&str] = &[
    "三体",
    "活着",
    "红楼梦",
    "围城",
    "小王子",
    "百年孤独",
    "平凡的世界",
];
const GENRES: &[&str] = &[
    "science fiction",
    "mysteries",
    "fantasy",
    "historical fiction",
    "thrillers",
];
const ZH_GENRES: &[&str] = &["科幻", "悬疑", "动画", "喜剧", "爱情"];
const PERCENTS: &[&str] = &["5", "10", "12", "15", "20", "25", "30", "35", "40", "50"];
const RATES: &[&str] = &["2", "2.5", "3", "3.5", "4", "4.5", "5", "6", "7", "8"];
const ZHE: &[&str] = &["7", "7.5", "8", "8.5", "9", "9.5"];

// ---------------------------------------------------------------------------
// Styling (applied to both classes with the same probabilities)
// ---------------------------------------------------------------------------

const EN_PREFIXES: &[&str] = &[
    "Hi, ",
    "Hello, ",
    "Quick question: ",
    "Hey, ",
    "Sorry to bother you, ",
    "Can you help? ",
    "Urgent: ",
    "Question: ",
];
const EN_SUFFIXES: &[&str] = &[
    " Thanks!",
    " thx",
    " Please help.",
    " Thank you.",
    " Asap please.",
];
const ZH_PREFIXES: &[&str] = &[
    "请问",
    "你好，",
    "麻烦问一下，",
    "急！",
    "在吗？",
    "问一下，",
];
const ZH_SUFFIXES: &[&str] = &["，谢谢", "，谢谢！", "，急", "，在线等", "，麻烦了"];

/// Uniform index into a collection of `len` items (0 when empty).
fn index(rng: &mut ChaCha8Rng, len: usize) -> usize {
    if len == 0 {
        0
    } else {
        rng.random_range(0..len)
    }
}

/// A uniformly chosen string (empty for an empty slice).
fn pick(rng: &mut ChaCha8Rng, items: &[&'static str]) -> &'static str {
    items
        .get(index(rng, items.len()))
        .copied()
        .unwrap_or_default()
}

/// Money amount such as `45`, `120` or `19.99`.
fn amount(rng: &mut ChaCha8Rng) -> String {
    let whole: u32 = rng.random_range(10..=500);
    if rng.random_bool(0.3) {
        format!("{}.99", whole - 1)
    } else {
        whole.to_string()
    }
}

/// A fresh value for the slot `name`, or `None` for an unknown slot.
fn slot_value(rng: &mut ChaCha8Rng, name: &str) -> Option<String> {
    let family = name.trim_end_matches(|c: char| c.is_ascii_digit());
    let value = match family {
        "a" | "b" | "c" => rng.random_range(2..=9u32).to_string(),
        "n" => rng.random_range(10..=30u32).to_string(),
        "x" | "y" => rng.random_range(12..=99u32).to_string(),
        "big" => rng.random_range(120..=1999u32).to_string(),
        "k" => (rng.random_range(2..=100u32) * 500).to_string(),
        "hours" => rng.random_range(2..=8u32).to_string(),
        "date" => rng.random_range(1..=28u32).to_string(),
        "order" => rng.random_range(10_000..=999_999u32).to_string(),
        "ticket" => rng.random_range(1_000..=99_999u32).to_string(),
        "inv" => format!("INV-{}", rng.random_range(1_000..=999_999u32)),
        "serial" => format!("SN{}", rng.random_range(10_000_000..=99_999_999u32)),
        "ecode" => {
            if rng.random_bool(0.5) {
                format!("E{}", rng.random_range(100..=999u32))
            } else {
                format!("0x{:04X}", rng.random_range(0x1000..=0xFFFFu32))
            }
        }
        "amt" => amount(rng),
        "pct" => pick(rng, PERCENTS).to_string(),
        "r" => pick(rng, RATES).to_string(),
        "zhe" => pick(rng, ZHE).to_string(),
        "product" => pick(rng, PRODUCTS).to_string(),
        "zproduct" => pick(rng, ZH_PRODUCTS).to_string(),
        "name" => pick(rng, NAMES).to_string(),
        "zname" => pick(rng, ZH_NAMES).to_string(),
        "city" => pick(rng, CITIES).to_string(),
        "zcity" => pick(rng, ZH_CITIES).to_string(),
        "plan" => pick(rng, PLANS).to_string(),
        "zplan" => pick(rng, ZH_PLANS).to_string(),
        "app" => pick(rng, APPS).to_string(),
        "zapp" => pick(rng, ZH_APPS).to_string(),
        "device" => pick(rng, DEVICES).to_string(),
        "zdevice" => pick(rng, ZH_DEVICES).to_string(),
        "company" => pick(rng, COMPANIES).to_string(),
        "zcompany" => pick(rng, ZH_COMPANIES).to_string(),
        "month" => pick(rng, MONTHS).to_string(),
        "zmonth" => pick(rng, ZH_MONTHS).to_string(),
        "day" => pick(rng, DAYS).to_string(),
        "zday" => pick(rng, ZH_DAYS).to_string(),
        "color" => pick(rng, COLORS).to_string(),
        "zcolor" => pick(rng, ZH_COLORS).to_string(),
        "opt" => pick(rng, OPTIONS).to_string(),
        "zopt" => pick(rng, ZH_OPTIONS).to_string(),
        "lang" => pick(rng, LANGS).to_string(),
        "country" => pick(rng, COUNTRIES).to_string(),
        "zcountry" => pick(rng, ZH_COUNTRIES).to_string(),
        "word" => pick(rng, WORDS).to_string(),
        "zword" => pick(rng, ZH_WORDS).to_string(),
        "zidiom" => pick(rng, ZH_IDIOMS).to_string(),
        "topic" => pick(rng, TOPICS).to_string(),
        "ztopic" => pick(rng, ZH_TOPICS).to_string(),
        "person" => pick(rng, PEOPLE).to_string(),
        "zperson" => pick(rng, ZH_PEOPLE).to_string(),
        "event" => pick(rng, EVENTS).to_string(),
        "zevent" => pick(rng, ZH_EVENTS).to_string(),
        "animal" => pick(rng, ANIMALS).to_string(),
        "zanimal" => pick(rng, ZH_ANIMALS).to_string(),
        "dish" => pick(rng, DISHES).to_string(),
        "zdish" => pick(rng, ZH_DISHES).to_string(),
        "subject" => pick(rng, SUBJECTS).to_string(),
        "zsubject" => pick(rng, ZH_SUBJECTS).to_string(),
        "relative" => pick(rng, RELATIVES).to_string(),
        "zrelative" => pick(rng, ZH_RELATIVES).to_string(),
        "phrase" => pick(rng, PHRASES).to_string(),
        "zphrase" => pick(rng, ZH_PHRASES).to_string(),
        "tongue" => pick(rng, TONGUES).to_string(),
        "ztongue" => pick(rng, ZH_TONGUES).to_string(),
        "book" => pick(rng, BOOKS).to_string(),
        "zbook" => pick(rng, ZH_BOOKS).to_string(),
        "genre" => pick(rng, GENRES).to_string(),
        "zgenre" => pick(rng, ZH_GENRES).to_string(),
        _ => return None,
    };
    Some(value)
}

/// Fills every `{slot}` in `template`. A slot name used twice gets the same
/// value; slots of one family (`name`, `name2`, `name3`) get distinct values
/// where the list allows. Unknown slots are left verbatim.
fn fill(rng: &mut ChaCha8Rng, template: &str) -> String {
    let mut out = String::with_capacity(template.len() + 32);
    let mut values: Vec<(&str, String)> = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            out.push_str(&rest[open..]);
            return out;
        };
        let name = &after[..close];
        if let Some((_, v)) = values.iter().find(|(n, _)| *n == name) {
            out.push_str(v);
        } else {
            let family = name.trim_end_matches(|c: char| c.is_ascii_digit());
            let mut chosen = slot_value(rng, name);
            for _ in 0..8 {
                let clash = chosen.as_ref().is_some_and(|v| {
                    values.iter().any(|(n, other)| {
                        n.trim_end_matches(|c: char| c.is_ascii_digit()) == family && other == v
                    })
                });
                if !clash {
                    break;
                }
                chosen = slot_value(rng, name);
            }
            match chosen {
                Some(v) => {
                    out.push_str(&v);
                    values.push((name, v));
                }
                None => {
                    out.push('{');
                    out.push_str(name);
                    out.push('}');
                }
            }
        }
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    out
}

/// Removes trailing sentence punctuation (ASCII and full-width).
fn strip_end_punct(s: &str) -> &str {
    s.trim_end_matches(['?', '.', '!', '？', '。', '！'])
}

/// Lowercases the first character unless the sentence starts with a slot,
/// the pronoun "I", or an acronym such as "VPN".
fn lower_first(template: &str, filled: &str) -> String {
    let mut chars = filled.chars();
    let first = chars.next();
    let second = chars.next();
    let keep = template.starts_with('{')
        || template.starts_with("I ")
        || template.starts_with("I'")
        || second.is_some_and(|c| c.is_uppercase() || c.is_ascii_digit());
    match first {
        Some(f) if !keep => {
            let mut s: String = f.to_lowercase().collect();
            s.push_str(&filled[f.len_utf8()..]);
            s
        }
        _ => filled.to_string(),
    }
}

/// Adds register noise: greetings, sign-offs, all-lowercase, no final
/// punctuation. Same probabilities for both classes.
fn style(rng: &mut ChaCha8Rng, lang: Lang, template: &str, filled: String) -> String {
    let mut s = filled;
    match lang {
        Lang::En => {
            if rng.random_bool(0.12) {
                s = format!("{}{}", pick(rng, EN_PREFIXES), lower_first(template, &s));
            }
            if rng.random_bool(0.08) {
                s.push_str(pick(rng, EN_SUFFIXES));
            }
            if rng.random_bool(0.2) {
                s = strip_end_punct(&s.to_lowercase()).to_string();
            }
        }
        Lang::Zh => {
            if rng.random_bool(0.12) {
                let prefix = pick(rng, ZH_PREFIXES);
                let head: String = prefix.chars().take(2).collect();
                if !s.starts_with(&head) {
                    s = format!("{prefix}{s}");
                }
            }
            if rng.random_bool(0.08) {
                s = format!("{}{}", strip_end_punct(&s), pick(rng, ZH_SUFFIXES));
            }
            if rng.random_bool(0.25) {
                s = strip_end_punct(&s).to_string();
            }
        }
    }
    s
}

/// One candidate query for `intent` in `lang`.
/// One candidate for `intent` in `lang`: the filled template before styling
/// (the near-duplicate key) and the final styled query.
fn candidate(rng: &mut ChaCha8Rng, intent: &Intent, lang: Lang) -> (String, String) {
    let templates = match lang {
        Lang::En => intent.en,
        Lang::Zh => intent.zh,
    };
    let template = pick(rng, templates);
    let filled = fill(rng, template);
    let styled = style(rng, lang, template, filled.clone());
    (filled, styled)
}

/// Up to `n` new queries for one class, recorded in `seen`. Intents and
/// languages are dealt from a reshuffled deck so that every (intent, language)
/// pair is used about equally often. A candidate is rejected when either its
/// final text or its unstyled text was seen before, so two queries never
/// differ only by a greeting, case or punctuation (which would leak across a
/// train/test split).
fn generate_class(
    rng: &mut ChaCha8Rng,
    intents: &[&Intent],
    label: usize,
    n: usize,
    seen: &mut HashSet<String>,
    out: &mut Vec<LabeledQuery>,
) {
    let mut deck: Vec<(usize, Lang)> = (0..intents.len())
        .flat_map(|i| [(i, Lang::En), (i, Lang::Zh)])
        .collect();
    let mut dealt = deck.len();
    let mut produced = 0;
    for _ in 0..MAX_ATTEMPTS_PER_CLASS {
        if produced >= n {
            break;
        }
        if dealt >= deck.len() {
            deck.shuffle(rng);
            dealt = 0;
        }
        let Some(&(i, lang)) = deck.get(dealt) else {
            break;
        };
        dealt += 1;
        let Some(&intent) = intents.get(i) else {
            continue;
        };
        let (key, query) = candidate(rng, intent, lang);
        if query.trim().is_empty() || seen.contains(&key) || seen.contains(&query) {
            continue;
        }
        seen.insert(key);
        seen.insert(query.clone());
        out.push(LabeledQuery { query, label });
        produced += 1;
    }
}

/// Generates `n_per_class` queries for each of the two classes (reasoning = 0, sop = 1),
/// deterministically from `seed`, interleaved in a seeded shuffled order, with no duplicate query strings.
///
/// If a class cannot supply `n_per_class` distinct queries within
/// [`MAX_ATTEMPTS_PER_CLASS`] attempts, it contributes fewer.
pub fn generate(seed: u64, n_per_class: usize) -> Vec<LabeledQuery> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let cap = n_per_class.min(MAX_ATTEMPTS_PER_CLASS);
    let mut seen = HashSet::with_capacity(2 * cap);
    let mut out = Vec::with_capacity(2 * cap);
    let foundation: Vec<&Intent> = REASONING.iter().chain(GENERAL).collect();
    let sop: Vec<&Intent> = SOP.iter().collect();
    generate_class(
        &mut rng,
        &foundation,
        LABEL_REASONING,
        n_per_class,
        &mut seen,
        &mut out,
    );
    generate_class(&mut rng, &sop, LABEL_SOP, n_per_class, &mut seen, &mut out);
    out.shuffle(&mut rng);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn has_cjk(s: &str) -> bool {
        s.chars().any(|c| ('\u{4e00}'..='\u{9fff}').contains(&c))
    }

    fn count(items: &[LabeledQuery], label: usize) -> usize {
        items.iter().filter(|q| q.label == label).count()
    }

    #[test]
    fn same_seed_same_output() {
        assert_eq!(generate(7, 350), generate(7, 350));
    }

    #[test]
    fn different_seeds_differ() {
        assert_ne!(generate(1, 100), generate(2, 100));
    }

    #[test]
    fn no_duplicates() {
        let items = generate(42, 350);
        let unique: HashSet<&str> = items.iter().map(|q| q.query.as_str()).collect();
        assert_eq!(unique.len(), items.len());
    }

    #[test]
    fn requested_counts_per_label() {
        let items = generate(3, 350);
        assert_eq!(items.len(), 700);
        assert_eq!(count(&items, LABEL_REASONING), 350);
        assert_eq!(count(&items, LABEL_SOP), 350);
    }

    #[test]
    fn labels_are_interleaved() {
        let items = generate(5, 350);
        let first_half = &items[..350];
        let r = count(first_half, LABEL_REASONING);
        assert!(
            (100..=250).contains(&r),
            "first half has {r} reasoning items"
        );
    }

    #[test]
    fn both_languages_in_each_class() {
        let items = generate(11, 350);
        for label in [LABEL_REASONING, LABEL_SOP] {
            let class: Vec<&LabeledQuery> = items.iter().filter(|q| q.label == label).collect();
            let zh = class.iter().filter(|q| has_cjk(&q.query)).count();
            let en = class.len() - zh;
            assert!(zh >= 100, "label {label}: only {zh} Chinese items");
            assert!(en >= 100, "label {label}: only {en} English items");
        }
    }

    #[test]
    fn at_least_400_distinct_per_class() {
        let items = generate(9, 400);
        assert_eq!(count(&items, LABEL_REASONING), 400);
        assert_eq!(count(&items, LABEL_SOP), 400);
    }

    #[test]
    fn every_template_fills_completely() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        for intents in [REASONING, GENERAL, SOP] {
            for intent in intents {
                assert!(intent.en.len() >= 3 && intent.zh.len() >= 3);
                for template in intent.en.iter().chain(intent.zh) {
                    for _ in 0..5 {
                        let filled = fill(&mut rng, template);
                        assert!(
                            !filled.contains('{') && !filled.contains('}'),
                            "unfilled slot in {template:?}: {filled:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn distinct_slot_family_values() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for _ in 0..200 {
            let s = fill(&mut rng, "{name}|{name2}|{name3}");
            let parts: Vec<&str> = s.split('|').collect();
            assert_eq!(parts.len(), 3);
            assert!(parts[0] != parts[1] && parts[1] != parts[2] && parts[0] != parts[2]);
        }
    }

    #[test]
    fn huge_request_is_bounded() {
        let start = Instant::now();
        let items = generate(13, 1_000_000);
        assert!(start.elapsed() < Duration::from_secs(10));
        assert!(items.len() <= 2 * MAX_ATTEMPTS_PER_CLASS);
        assert!(count(&items, LABEL_REASONING) >= 400);
        assert!(count(&items, LABEL_SOP) >= 400);
    }

    #[test]
    fn zero_requested_is_empty() {
        assert!(generate(0, 0).is_empty());
    }
}
